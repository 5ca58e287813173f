"""Unified paged attention against its torch reference under the Triton interpreter: ragged
flat batches mixing prefill chunks over cached context with decodes, block sizes 1/4/16 and
one block per sequence (the contiguous cache), GQA ratios 1-8, sliding windows, soft-capping,
FP8 caches with scales, forced split-KV; and the split reduction on its own."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kernels import cases

DTYPES = st.sampled_from([torch.float32, torch.float16])


@settings(max_examples=30, deadline=None)
@given(dtype=DTYPES, case=cases.attention_cases())
def test_mixed_batches(dtype, case):
    cases.check_paged_attention("cpu", dtype, case)


@settings(max_examples=15, deadline=None)
@given(dtype=DTYPES, case=cases.attention_cases(decode_only=True, max_context=150, max_requests=3))
def test_long_decodes(dtype, case):
    cases.check_paged_attention("cpu", dtype, case)


def test_head_dims_128_and_256_prefill_and_decode():
    for head_dim in (128, 256):
        for q_lens, ctx in (((33, 1), (20, 70)), ((1, 1), (90, 5))):
            case = cases.AttentionCase(4, 2, head_dim, 16, ctx, q_lens, sliding_window=50, seed=head_dim)
            cases.check_paged_attention("cpu", torch.float32, case)


@settings(max_examples=15, deadline=None)
@given(tokens=st.integers(1, 6), heads=st.integers(1, 4), splits=st.integers(2, 9),
       head_dim=st.sampled_from([8, 64]), seed=st.integers(0, 2**16))
def test_attention_reduce(tokens, heads, splits, head_dim, seed):
    cases.check_attention_reduce("cpu", tokens, heads, splits, head_dim, seed)
