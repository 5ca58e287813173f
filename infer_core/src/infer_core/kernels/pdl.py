"""Programmatic dependent launch (PDL, Hopper and later) for the decode step's kernels.

At batch 1 a decode step is a chain of about 200 (Llama-3.2-1B) to 350 (Qwen3-0.6B) short
kernels replayed from a CUDA graph, and the gap between two of them (the next grid's launch
and ramp-up after the previous one drains) is a large part of each. With PDL a kernel may be
launched while the one before it is still running: its programs start, call
:func:`wait_for_prior` (``griddepcontrol.wait``: blocks until the previous grid has completed
and its memory is visible), then run. Every kernel launched this way waits first thing,
before any load of the previous kernel's outputs and before any store (the previous grid may
still read what this one overwrites), so the order of effects is exactly the stream order,
and the chain stays transitive (a grid never completes before the one it waited for). The
kernel also signals at once that the next one may launch (``griddepcontrol.launch_dependents``).

Our Triton kernels take a ``PDL`` constexpr and are launched with ``launch_pdl=PDL``;
:func:`use_pdl` decides: CUDA devices of compute capability 9.0 and later, unless the
environment sets ``INFER_PDL=0`` (for A/B measurements). Kernels of other libraries
(cuBLAS, torch) launch normally and keep full stream order around them.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def use_pdl(t: torch.Tensor) -> bool:
    """Launch kernels on ``t``'s device with programmatic dependent launch."""
    if not t.is_cuda or os.environ.get("INFER_PDL", "1") == "0":
        return False
    return _capable(t.device.index if t.device.index is not None else torch.cuda.current_device())


@triton.jit
def wait_for_prior():
    """Wait for the previous grid (its stores visible), then let the next one launch."""
    tl.extra.cuda.gdc_wait()
    tl.extra.cuda.gdc_launch_dependents()
