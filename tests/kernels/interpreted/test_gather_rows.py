"""The PDL row gather (``gather_rows``: embedding lookup, block-table rows) against its torch
reference under the Triton interpreter: any dtype, int32 / int64 indices in any order with
repeats, a width below the row's, rows wider than one program's block, an empty index, and
the shapes it refuses."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels.gather_rows import MAX_BLOCK, gather_rows, gather_rows_ref


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 50), cols=st.one_of(st.integers(1, 70), st.integers(MAX_BLOCK - 3, MAX_BLOCK + 40)),
       n=st.integers(0, 12), narrower=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float16,
                                                                             torch.int32]),
       index_dtype=st.sampled_from([torch.int32, torch.int64]), seed=st.integers(0, 2**16))
def test_gather_rows_matches_reference(rows, cols, n, narrower, dtype, index_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    src = (torch.randn(rows, cols + 5, generator=gen) * 100).to(dtype)[:, :cols]  # rows strided past the width
    width = max(cols // 2, 1) if narrower else None
    index = torch.randint(0, rows, (n,), generator=gen).to(index_dtype)
    expected = gather_rows_ref(src, index, width)
    out = gather_rows(src, index, width)
    assert out.shape == expected.shape and torch.equal(out, expected)
    into = torch.full_like(expected, 7)
    assert gather_rows(src, index, width, out=into) is into and torch.equal(into, expected)


def test_gather_rows_is_the_embedding_lookup():
    weight = torch.randn(30, 16)
    ids = torch.tensor([3, 0, 29, 3], dtype=torch.int32)
    assert torch.equal(gather_rows(weight, ids), torch.nn.functional.embedding(ids, weight))


def test_gather_rows_refuses_bad_shapes():
    src = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="1-D index"):
        gather_rows(src, torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int32 or int64"):
        gather_rows(src, torch.zeros(2))
    with pytest.raises(ValueError, match="width 9"):
        gather_rows(src, torch.zeros(2, dtype=torch.int64), 9)
    with pytest.raises(ValueError, match="writes"):
        gather_rows(src, torch.zeros(2, dtype=torch.int64), out=torch.zeros(3, 8))
    with pytest.raises(ValueError, match="contiguous rows"):
        gather_rows(src.t(), torch.zeros(2, dtype=torch.int64))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 20), cols=st.one_of(st.integers(1, 40), st.integers(MAX_BLOCK + 1, MAX_BLOCK + 9)),
       n=st.integers(0, 10), n_sampled=st.integers(1, 12), src_dtype=st.sampled_from([torch.int32, torch.int64]),
       ids_dtype=st.sampled_from([torch.int32, torch.int64]), seed=st.integers(0, 2**16))
def test_gather_rows_with_the_placeholder_fill(rows, cols, n, n_sampled, src_dtype, ids_dtype, seed):
    """``fill``: the block-table gather and fill_ids' placeholder fill in one launch: the same
    rows as without it, and the ids exactly as fill_ids_ref leaves them (rows wider than a block
    take several programs; only the first fills)."""
    from infer_core.kernels.fill_ids import fill_ids_ref

    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(0, 1000, (rows, cols), generator=gen, dtype=torch.int32)
    index = torch.randint(0, rows, (n,), generator=gen)
    ids = torch.randint(0, 500, (n,), generator=gen).to(ids_dtype)
    fill_src = torch.where(torch.rand(n, generator=gen) < 0.5, torch.randint(0, n_sampled, (n,), generator=gen),
                           torch.full((n,), -1)).to(src_dtype)
    sampled = torch.randint(0, 100_000, (n_sampled,), generator=gen)
    want_ids = ids.clone()
    fill_ids_ref(want_ids, fill_src, sampled)
    out = gather_rows(table, index, fill=(ids, fill_src, sampled))
    assert torch.equal(out, gather_rows_ref(table, index)) and torch.equal(ids, want_ids)


def test_gather_rows_refuses_a_fill_of_another_length():
    table, index = torch.zeros(4, 8, dtype=torch.int32), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="index's length"):
        gather_rows(table, index, fill=(torch.zeros(2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64),
                                        torch.zeros(5, dtype=torch.int64)))
