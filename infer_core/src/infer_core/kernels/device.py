"""What the kernels' launch choices ask of the device."""

from __future__ import annotations

import os

import torch


def num_sms(device: torch.device) -> int:
    """The device's streaming multiprocessors; 4 on the CPU (the Triton interpreter), so that
    launch choices that split work over SMs still split it there."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def gather_rows_enabled(t: torch.Tensor) -> bool:
    """Whether the engine's row gathers on ``t``'s device (embedding lookup, block-table rows)
    take :mod:`~infer_core.kernels.gather_rows`: CUDA tensors, unless ``INFER_GATHER_ROWS=0``
    (torch's ``index_select`` / ``F.embedding``, launched without PDL; W1 Qwen3-0.6B on an H200
    0.662 against 0.666 ms per token, benchmarks/reports/group-sync-2026-12-04-h200). Imports
    no Triton: the CPU path never loads it."""
    return t.is_cuda and os.environ.get("INFER_GATHER_ROWS", "1") != "0"
