"""Block tables kept across steps, one row per runner slot (vLLM V1's ``BlockTable`` idea).

A request gets a slot (a row) when the runner first sees it and keeps it until it leaves.
Its row is written once when it arrives and then only where it gains blocks, into a CPU
tensor (pinned on CUDA); ``commit`` copies the rows that changed to the device mirror, and
``gather`` lays out the step's rows, in batch order, in a buffer allocated once. A decode
step that gains no block copies nothing from the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from infer_core.kernels.device import gather_rows_enabled


class BlockTable:
    def __init__(self, max_num_seqs: int, max_blocks: int, device: torch.device) -> None:
        self.device = device
        self.on_host = device.type == "cpu"
        pin = device.type == "cuda"
        self.cpu = torch.zeros(max_num_seqs, max_blocks, dtype=torch.int32, pin_memory=pin)
        self.np = self.cpu.numpy()
        self.num_blocks = np.zeros(max_num_seqs, dtype=np.int64)
        self.table = self.cpu if self.on_host else torch.zeros_like(self.cpu, device=device)
        self.batch = torch.zeros(max_num_seqs * max_blocks, dtype=torch.int32, device=device)
        self._free = list(range(max_num_seqs - 1, -1, -1))  # pop() hands out the lowest slot
        self._dirty: set[int] = set()

    @property
    def num_free_slots(self) -> int:
        return len(self._free)

    def add(self, block_ids: Sequence[int]) -> int:
        """A new row holding ``block_ids``; returns its slot."""
        assert self._free, "more requests than max_num_seqs"
        slot = self._free.pop()
        self.num_blocks[slot] = 0
        self.append(slot, block_ids)
        return slot

    def append(self, slot: int, block_ids: Sequence[int]) -> None:
        if not block_ids:
            return
        start = int(self.num_blocks[slot])
        end = start + len(block_ids)
        self.np[slot, start:end] = block_ids
        self.num_blocks[slot] = end
        self._dirty.add(slot)

    def remove(self, slot: int) -> None:
        self.num_blocks[slot] = 0
        self._dirty.discard(slot)
        self._free.append(slot)
        self._free.sort(reverse=True)

    def commit(self) -> None:
        """Copy the rows written since the last commit to the device (nothing on the CPU)."""
        if not self._dirty:
            return
        rows = sorted(self._dirty)
        self._dirty.clear()
        if self.on_host:
            return
        width = int(self.num_blocks[rows].max())
        index = torch.tensor(rows, dtype=torch.int64).pin_memory()
        staged = self.cpu[index, :width].pin_memory()
        self.table[index.to(self.device, non_blocking=True), :width] = staged.to(self.device, non_blocking=True)

    def view(self, rows: int, width: int) -> torch.Tensor:
        """The persistent batch buffer as ``[rows, width]`` (what ``gather`` writes)."""
        return self.batch[: rows * width].view(rows, width)

    def gather(self, slots: torch.Tensor, width: int,
               fill: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The rows of ``slots`` (a device int32 or int64 tensor, batch order), ``width`` blocks each,
        in the persistent batch buffer: ``[len(slots), width]``, contiguous. ``fill = (ids,
        fill_src, sampled)`` (CUDA): also :func:`~infer_core.kernels.fill_ids.fill_ids`'s
        placeholder fill, in the same launch where the gather is a PDL launch."""
        out = self.view(slots.shape[0], width)
        if gather_rows_enabled(slots):  # a PDL launch (INFER_GATHER_ROWS=0: torch's)
            from infer_core.kernels.gather_rows import gather_rows

            return gather_rows(self.table, slots, width, out=out, fill=fill)
        if fill is not None:
            from infer_core.kernels.fill_ids import fill_ids

            fill_ids(*fill)
        torch.index_select(self.table[:, :width], 0, slots, out=out)
        return out
