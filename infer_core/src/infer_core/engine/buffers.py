"""The step inputs, staged in one buffer allocated once: a host side numpy writes into and a
device side the model reads (the same memory on the CPU; a pinned host tensor and a device
tensor on CUDA), cut into named int32 regions at fixed offsets.

Fixed offsets keep every device view at the same address across steps (what a CUDA graph
replays against); one buffer means one host-to-device copy per step — the prefix up to the
last value used — instead of one per input (each copy costs several µs of host time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class Region:
    np: np.ndarray  # host values (write here)
    device: torch.Tensor  # the device copy (read here, after StagingBuffer.to_device)
    start: int  # offset in the staging buffer


class StagingBuffer:
    def __init__(self, sizes: Mapping[str, int], device: torch.device) -> None:
        total = sum(sizes.values())
        self.cpu = torch.zeros(total, dtype=torch.int32, pin_memory=device.type == "cuda")
        self.device = self.cpu if device.type == "cpu" else torch.zeros(total, dtype=torch.int32, device=device)
        host = self.cpu.numpy()
        self.regions: dict[str, Region] = {}
        offset = 0
        for name, size in sizes.items():
            self.regions[name] = Region(host[offset:offset + size], self.device[offset:offset + size], offset)
            offset += size

    def to_device(self, end: int) -> None:
        """Copy values ``[0, end)`` of the buffer to the device (asynchronously on CUDA)."""
        if self.device is not self.cpu:
            self.device[:end].copy_(self.cpu[:end], non_blocking=True)
