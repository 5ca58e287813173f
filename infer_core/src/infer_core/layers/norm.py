"""RMSNorm, in the two numerics the supported families use (Triton kernel on CUDA)."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """``x / rms(x) * w``, computed in float32.

    ``gemma=True`` gives Gemma's variant: the stored weight is an offset (``1 + w``) and the
    product is taken in float32 before casting back; Llama and Qwen cast back first.

    ``forward(x, residual)`` fuses the residual add before the norm: it returns
    ``(norm(x + residual), x + residual)``, one pass over memory on CUDA.
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, gemma: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.gemma = gemma
        self.weight = nn.Parameter(torch.zeros(dim) if gemma else torch.ones(dim))

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.is_cuda and x.dtype == self.weight.dtype:
            from infer_core.kernels import rms_norm

            if residual is None:
                return rms_norm.rms_norm(x, self.weight, self.eps, self.gemma)
            return rms_norm.fused_add_rms_norm(x, residual, self.weight, self.eps, self.gemma)
        if residual is not None:
            x = x + residual
            return self._norm(x), x
        return self._norm(x)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.gemma:
            return (h * (1.0 + self.weight.float())).to(dtype)
        return self.weight * h.to(dtype)
