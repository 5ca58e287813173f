"""Linear layers whose weights are stacked from several checkpoint tensors at load time
(fused QKV, fused gate/up): one GEMM where the checkpoint has several."""

from __future__ import annotations

import torch
from torch import nn


class MergedLinear(nn.Linear):
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
