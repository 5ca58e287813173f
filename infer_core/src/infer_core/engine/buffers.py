"""A step-input buffer allocated once, with a host side numpy writes into and a device side
the model reads (the same memory on the CPU; a pinned host tensor and a device tensor on CUDA)."""

from __future__ import annotations

import torch


class HostDeviceBuffer:
    def __init__(self, size: int, dtype: torch.dtype, device: torch.device) -> None:
        self.cpu = torch.zeros(size, dtype=dtype, pin_memory=device.type == "cuda")
        self.np = self.cpu.numpy()
        self.device = self.cpu if device.type == "cpu" else torch.zeros(size, dtype=dtype, device=device)

    def to_device(self, n: int) -> torch.Tensor:
        """The first ``n`` values on the device (an asynchronous copy on CUDA)."""
        if self.device is not self.cpu:
            self.device[:n].copy_(self.cpu[:n], non_blocking=True)
        return self.device[:n]
