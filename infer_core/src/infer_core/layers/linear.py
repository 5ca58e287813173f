"""Linear layers: :class:`Linear` (``nn.Linear`` that can route few-row inputs to the Triton
small-M GEMM when ``model.small_m_gemm`` is on, with the RMSNorm before it or the gated
activation folded into that GEMM's prologue) and :class:`MergedLinear`, whose weights are
stacked from several checkpoint tensors at load time (fused QKV, fused gate/up): one GEMM
where the checkpoint has several; a gate/up one can also run the gated activation after it in
the GEMM's epilogue."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infer_core.layers.activation import ACTIVATIONS, KERNEL_ACTIVATIONS
from infer_core.layers.norm import RMSNorm

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
    # with small_m: forward_normed / forward_gated fold their op into the GEMM's prologue
    norm_prologue = False
    act_prologue = False
    # with small_m: MergedLinear.forward_normed_gated folds the activation into the epilogue
    gated_epilogue = False

    def _takes_small_m(self, x: torch.Tensor) -> bool:
        return self.small_m and x.dim() == 2 and x.shape[0] <= SMALL_M and self.bias is None

    def _takes_norm_prologue(self, x: torch.Tensor, norm: RMSNorm) -> bool:
        return self.norm_prologue and self._takes_small_m(x) and norm.weight.dtype == x.dtype

    def reduce_output(self, y: torch.Tensor) -> torch.Tensor:
        """The layer's output from this rank's product (the sum over ranks in a row-parallel
        layer, ``layers.parallel.RowParallelLinear``)."""
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._takes_small_m(x):
            from infer_core.kernels.small_m_gemm import small_m_gemm

            return self.reduce_output(small_m_gemm(x, self.weight))
        return self.reduce_output(F.linear(x, self.weight, self.bias))

    def forward_normed(
        self, x: torch.Tensor, norm: RMSNorm, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pre-norm projection: ``(self(norm(x + residual)), x + residual)``, or
        ``(self(norm(x)), x)`` without a residual (the decoder layer's first norm). At one row
        with the norm prologue on, one launch: the (residual add and) RMSNorm run in the small-M
        GEMM's prologue."""
        if self._takes_norm_prologue(x, norm):
            from infer_core.kernels.small_m_gemm import NormPrologue, small_m_gemm

            y, h = small_m_gemm(x, self.weight, norm=NormPrologue(norm.weight, norm.eps, norm.gemma, residual))
            return y, x if h is None else h
        if residual is None:
            return self(norm(x)), x
        h, residual = norm(x, residual)
        return self(h), residual

    def forward_gated(self, x: torch.Tensor, act: str) -> torch.Tensor:
        """``self(act_and_mul(x))`` for ``x = [gate | up]`` and ``act`` a key of
        :data:`~infer_core.layers.activation.ACTIVATIONS`; at one row with the act prologue on, the
        activation runs in the small-M GEMM's prologue (one launch)."""
        if self.act_prologue and self._takes_small_m(x) and act in KERNEL_ACTIVATIONS:
            from infer_core.kernels.small_m_gemm import small_m_gemm

            return self.reduce_output(small_m_gemm(x, self.weight, act_and_mul=KERNEL_ACTIVATIONS[act]))
        return self(ACTIVATIONS[act](x))


PROLOGUES = {"none": (False, False), "act": (False, True), "norm": (True, False), "all": (True, True)}


def enable_small_m_gemm(model: nn.Module, prologues: str = "none", gated_epilogue: bool = False) -> int:
    """Route the few-row inputs of every :class:`Linear` of ``model`` to the small-M GEMM,
    with the norms (``prologues`` "norm" or "all") and gated activations ("act" or "all")
    their callers hand over folded into its prologue, and with ``gated_epilogue`` the gated
    activation after a gate/up projection folded into its epilogue
    (:meth:`MergedLinear.forward_normed_gated`); returns how many layers were switched."""
    norm, act = PROLOGUES[prologues]
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    for layer in layers:
        layer.small_m = True
        layer.norm_prologue, layer.act_prologue = norm, act
        layer.gated_epilogue = gated_epilogue
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

    def takes_gated_epilogue(self, x: torch.Tensor, act: str) -> bool:
        """Whether :meth:`forward_normed_gated` runs ``act`` in the small-M GEMM's epilogue for
        ``x`` (one row, the epilogue on, an activation the kernel has)."""
        return self.gated_epilogue and self._takes_small_m(x) and act in KERNEL_ACTIVATIONS

    def forward_normed_gated(
        self, x: torch.Tensor, norm: RMSNorm, residual: torch.Tensor | None, act: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pre-norm gate/up projection and its gated activation (the MLP's first half):
        ``(act_and_mul(self(norm(x + residual))), x + residual)``, or without a residual
        ``(act_and_mul(self(norm(x))), x)``; the layer's rows are ``[gate; up]``, ``act`` a key
        of :data:`~infer_core.layers.activation.ACTIVATIONS`.

        When :meth:`takes_gated_epilogue`, the activation runs in the small-M GEMM's epilogue
        (and the norm in its prologue when :meth:`forward_normed` would fold it: one launch;
        else the norm first, then the GEMM); otherwise :meth:`forward_normed`, then the
        activation. The output is never reduced across ranks (a column-parallel layer: each
        rank holds ``[gate_r; up_r]`` and the activation is elementwise), so it is exact with
        tensor parallelism too."""
        assert len(self.sizes) == 2 and self.sizes[0] == self.sizes[1], self.sizes  # [gate; up]
        if not self.takes_gated_epilogue(x, act):
            y, h = self.forward_normed(x, norm, residual)
            return ACTIVATIONS[act](y), h
        from infer_core.kernels.small_m_gemm import NormPrologue, small_m_gemm

        gated = KERNEL_ACTIVATIONS[act]
        if self._takes_norm_prologue(x, norm):
            y, h = small_m_gemm(x, self.weight, gated=gated,
                                norm=NormPrologue(norm.weight, norm.eps, norm.gemma, residual))
            return y, x if h is None else h
        xn, h = (norm(x), x) if residual is None else norm(x, residual)
        return small_m_gemm(xn, self.weight, gated=gated), h
