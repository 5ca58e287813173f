"""A rank's view of its tensor-parallel group: its rank, the group size and the collectives
the parallel layers need (identities at size 1, so a model built for one rank runs no
communication at all)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from infer_core.errors import ConfigError


@dataclass(frozen=True, eq=False)
class TPGroup:
    rank: int = 0
    size: int = 1
    group: Any = None  # the torch.distributed process group (None at size 1)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks, in place."""
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., n]`` on every rank → ``[..., size * n]``, rank ``r``'s part at ``r * n``."""
        if self.size == 1:
            return x
        x = x.contiguous()
        out = torch.empty((self.size, *x.shape), dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(out, x, group=self.group)
        return out.movedim(0, -2).reshape(*x.shape[:-1], self.size * x.shape[-1])

    def split(self, n: int, what: str) -> int:
        """``n / size``; a configuration error when ``n`` does not divide."""
        if n % self.size:
            raise ConfigError(
                f"parallel.tensor_parallel_size = {self.size} does not divide the model's {what} ({n}); "
                f"use a size that divides it."
            )
        return n // self.size

    def kv_heads(self, num_kv_heads: int) -> tuple[int, int]:
        """This rank's KV heads ``(first, count)``: split when the size divides them, one
        replicated head per rank when the size is a multiple of their number (e.g. Gemma 3
        270M's single KV head), else a configuration error."""
        if num_kv_heads % self.size == 0:
            count = num_kv_heads // self.size
            return self.rank * count, count
        if self.size % num_kv_heads == 0:
            return self.rank // (self.size // num_kv_heads), 1
        raise ConfigError(
            f"parallel.tensor_parallel_size = {self.size} neither divides the model's KV heads "
            f"({num_kv_heads}) nor is a multiple of them; use a size that does one or the other."
        )
