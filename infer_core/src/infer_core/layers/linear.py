"""Linear layers: :class:`Linear` (``nn.Linear`` that can route few-row inputs to the Triton
small-M GEMM when ``model.small_m_gemm`` is on) and :class:`MergedLinear`, whose weights are
stacked from several checkpoint tensors at load time (fused QKV, fused gate/up): one GEMM
where the checkpoint has several."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Inputs of at most this many rows take the small-M GEMM when it is enabled. Measured on an
# H200 (benchmarks/reports/small-m-gemm-2026-12-01-h200): at one row it beats cuBLAS on every
# projection of Llama-3.2-1B and Qwen3-0.6B (W1 1.15 -> 1.07 and 1.49 -> 1.13 ms/token); from
# two rows its configs are on a par with cuBLAS at best, so cuBLAS keeps them.
SMALL_M = 1


class Linear(nn.Linear):
    """``nn.Linear``; with ``small_m`` set (:func:`enable_small_m_gemm`, from the engine's
    ``model.small_m_gemm``, on by default on CUDA), inputs of at most ``SMALL_M`` rows
    (batch-1 decode) run through :func:`infer_core.kernels.small_m_gemm.small_m_gemm` instead
    of cuBLAS (docs/kernels.md)."""

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
