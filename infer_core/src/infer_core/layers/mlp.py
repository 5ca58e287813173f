"""The gated MLP of Llama, Qwen and Gemma: ``down(act(gate(x)) * up(x))``, gate and up fused
into one column-parallel projection, down row-parallel (one all-reduce with several ranks);
the pre-MLP norm runs with gate/up, and the activation with gate/up (at batch-1 decode, in the
small-M GEMM's epilogue when ``model.small_m_gated_epilogue`` is on; it wins over the
activation prologue) or else with down (inside the small-M GEMM's prologues when those are on).
The families differ only in the activation."""

from __future__ import annotations

import torch
from torch import nn

from infer_core.errors import ModelLoadError
from infer_core.layers.activation import ACTIVATIONS
from infer_core.layers.norm import RMSNorm
from infer_core.layers.parallel import MergedColumnParallelLinear, RowParallelLinear
from infer_core.parallel.group import TPGroup


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool = False,
                 tp: TPGroup | None = None) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ModelLoadError(f"hidden_act {act!r} is not supported; supported: {', '.join(sorted(ACTIVATIONS))}.")
        size = intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [size, size], bias=bias, tp=tp)
        self.down_proj = RowParallelLinear(size, hidden_size, bias=bias, tp=tp)
        self.act = act

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor, norm: RMSNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``norm(x + residual)`` through the MLP; returns ``(down output, x + residual)``. The
        activation runs in gate/up's epilogue when that layer takes it, then down is a plain
        projection; otherwise it runs with down (``forward_gated``: its prologue, or its own
        launch)."""
        if self.gate_up_proj.takes_gated_epilogue(x, self.act):
            hidden, residual = self.gate_up_proj.forward_normed_gated(x, norm, residual, self.act)
            return self.down_proj(hidden), residual
        gate_up, residual = self.gate_up_proj.forward_normed(x, norm, residual)
        return self.down_proj.forward_gated(gate_up, self.act), residual
