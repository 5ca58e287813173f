"""What the kernels' launch choices ask of the device."""

from __future__ import annotations

import torch


def num_sms(device: torch.device) -> int:
    """The device's streaming multiprocessors; 4 on the CPU (the Triton interpreter), so that
    launch choices that split work over SMs still split it there."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count
