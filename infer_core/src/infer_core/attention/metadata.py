"""The flat batch's attention metadata, shared by every attention backend.

A step packs the scheduled tokens of all requests into one sequence of ``T`` tokens.
Request ``i`` owns query rows ``query_start_loc[i] : query_start_loc[i+1]``; after this step
its KV cache holds ``seq_lens[i]`` tokens, the last ``query_len`` of which are the new ones
(so a decode has ``query_len == 1`` and a first prefill chunk has ``seq_len == query_len``).
``block_tables[i]`` lists its KV blocks; ``slot_mapping[t]`` is the cache slot token ``t``
writes (``block_id * block_size + offset``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with 0
    slot_mapping: torch.Tensor  # [T] int64
    block_size: int
    max_query_len: int
    max_seq_len: int
    # Host copies, for reference paths and for building views without a device sync.
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]

    @property
    def num_requests(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return self.query_start_loc_cpu[-1]


def build_attention_metadata(
    query_lens: Sequence[int],
    seq_lens: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    block_size: int,
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Metadata for requests with ``query_lens[i]`` new tokens and ``seq_lens[i]`` tokens in
    the cache after the step, whose blocks are ``block_tables[i]``."""
    assert len(query_lens) == len(seq_lens) == len(block_tables)
    starts = [0]
    slots: list[int] = []
    for q_len, s_len, table in zip(query_lens, seq_lens, block_tables, strict=True):
        assert 0 < q_len <= s_len <= len(table) * block_size, (q_len, s_len, len(table))
        starts.append(starts[-1] + q_len)
        slots.extend(table[p // block_size] * block_size + p % block_size
                     for p in range(s_len - q_len, s_len))
    width = max((len(t) for t in block_tables), default=0)
    padded = [list(t) + [0] * (width - len(t)) for t in block_tables]
    return AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(list(seq_lens), dtype=torch.int32, device=device),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device).reshape(len(padded), width),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_size=block_size,
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
        query_start_loc_cpu=starts,
        seq_lens_cpu=list(seq_lens),
    )
