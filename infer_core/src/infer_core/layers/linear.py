"""Linear layers: :class:`Linear` (``nn.Linear`` that can route few-row inputs to the Triton
small-M GEMM when ``model.small_m_gemm`` is on) and :class:`MergedLinear`, whose weights are
stacked from several checkpoint tensors at load time (fused QKV, fused gate/up): one GEMM
where the checkpoint has several."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SMALL_M = 16  # inputs of at most this many rows take the small-M GEMM when it is enabled


class Linear(nn.Linear):
    """``nn.Linear``; with ``small_m`` set (:func:`enable_small_m_gemm`, from the engine's
    ``model.small_m_gemm``), inputs of at most ``SMALL_M`` rows (decode steps of small
    batches) run through :func:`infer_core.kernels.small_m_gemm.small_m_gemm` instead of
    cuBLAS. Off by default: an experiment until measured (docs/kernels.md)."""

    small_m = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.small_m and x.dim() == 2 and x.shape[0] <= SMALL_M and self.bias is None:
            from infer_core.kernels.small_m_gemm import small_m_gemm

            return small_m_gemm(x, self.weight)
        return F.linear(x, self.weight, self.bias)


def enable_small_m_gemm(model: nn.Module) -> int:
    """Route the few-row inputs of every :class:`Linear` of ``model`` to the small-M GEMM;
    returns how many layers were switched."""
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    for layer in layers:
        layer.small_m = True
    return len(layers)


class MergedLinear(Linear):
    """``nn.Linear`` whose output is the concatenation of ``len(sizes)`` projections;
    :meth:`load_shard` copies checkpoint tensor ``index`` into its rows."""

    def __init__(self, in_features: int, sizes: list[int], bias: bool = False) -> None:
        super().__init__(in_features, sum(sizes), bias=bias)
        self.sizes = list(sizes)

    def shard_rows(self, index: int) -> slice:
        start = sum(self.sizes[:index])
        return slice(start, start + self.sizes[index])

    @torch.no_grad()
    def load_shard(self, param: nn.Parameter, tensor: torch.Tensor, index: int) -> None:
        param[self.shard_rows(index)].copy_(tensor)
