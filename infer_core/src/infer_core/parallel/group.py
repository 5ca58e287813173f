"""A rank's view of its tensor-parallel group: its rank, the group size and the collectives
the parallel layers need (identities at size 1, so a model built for one rank runs no
communication at all)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from infer_core.errors import ConfigError


@dataclass(frozen=True, eq=False)
class TPGroup:
    rank: int = 0
    size: int = 1
    group: Any = None  # a torch.distributed ProcessGroup object (gloo or NCCL); None at size 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks, in place."""
        if self.size > 1:
            self.group.allreduce([x]).wait()
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., n]`` on every rank → ``[..., size * n]``, rank ``r``'s part at ``r * n``."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        self.group.allgather([parts], [x.contiguous()]).wait()
        return torch.cat(parts, dim=-1)
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


def connect(rank: int, size: int, port: int, device: torch.device, timeout_s: float) -> TPGroup:
    """Join the group whose store rank 0 serves on ``127.0.0.1:port``: a process-group object
    of its own (NCCL on CUDA, gloo on the CPU), not torch.distributed's default group, so
    that several engines can live in one process. Blocks until every rank has joined."""
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore("127.0.0.1", port, size, is_master=False, timeout=timeout)
    store.set(joined_key(rank), "1")  # rank 0 waits for these, watching the processes
    return TPGroup(rank, size, process_group(store, rank, size, device, timeout))


def joined_key(rank: int) -> str:
    return f"infer/joined/{rank}"


def process_group(store: Any, rank: int, size: int, device: torch.device, timeout: timedelta) -> Any:
    if device.type == "cuda":
        torch.cuda.set_device(device)
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, size, options)
    return dist.ProcessGroupGloo(store, rank, size, timeout)
