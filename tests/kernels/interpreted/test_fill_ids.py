"""The decode graph's placeholder fill (``fill_ids``) against its torch reference under the
Triton interpreter: any mix of rows to fill and rows to keep, int32 and int64 sources, more
rows than one program's block, sources in any order (a row may read any sampled row), and the
shapes it refuses."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels.fill_ids import BLOCK, fill_ids, fill_ids_ref


@settings(max_examples=40, deadline=None)
@given(rows=st.one_of(st.integers(1, 12), st.integers(BLOCK - 2, 2 * BLOCK + 3)),
       sampled_rows=st.integers(1, 40), src_dtype=st.sampled_from([torch.int32, torch.int64]),
       seed=st.integers(0, 2**16))
def test_fill_ids_matches_reference(rows, sampled_rows, src_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (rows,), generator=gen, dtype=torch.int32)
    src = torch.randint(-1, sampled_rows, (rows,), generator=gen).to(src_dtype)
    sampled = torch.randint(100_000, 152_000, (sampled_rows,), generator=gen)
    expected = ids.clone()
    fill_ids_ref(expected, src, sampled)
    fill_ids(ids, src, sampled)
    assert torch.equal(ids, expected)
    kept = src < 0
    assert torch.equal(ids[~kept], sampled[src[~kept].long()].to(torch.int32))  # (the reference's meaning)


def test_fill_ids_keeps_every_row_without_a_source():
    ids = torch.arange(7, dtype=torch.int32)
    fill_ids(ids, torch.full((7,), -1, dtype=torch.int32), torch.tensor([5, 6]))
    assert ids.tolist() == list(range(7))


def test_fill_ids_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="1-D ids and src of one length"):
        fill_ids(torch.zeros(3, dtype=torch.int32), torch.zeros(4, dtype=torch.int32), torch.zeros(2, dtype=torch.int64))
