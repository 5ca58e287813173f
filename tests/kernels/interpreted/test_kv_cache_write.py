"""The KV-cache write against its torch reference under the Triton interpreter: scattered
slots, padding slots skipped, any block size, fp32/fp16 caches and FP8 (e4m3) with scales."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kernels import cases


@settings(max_examples=25, deadline=None)
@given(dtype=st.sampled_from([torch.float32, torch.float16]), tokens=st.integers(1, 20),
       heads=st.integers(1, 3), head_dim=st.sampled_from([8, 16, 24, 64]),
       block_size=st.sampled_from([1, 4, 16]), fp8=st.booleans(), seed=st.integers(0, 2**16))
def test_kv_cache_write(dtype, tokens, heads, head_dim, block_size, fp8, seed):
    cases.check_kv_write("cpu", dtype, tokens, heads, head_dim, block_size=block_size, fp8=fp8,
                         exact_fp8_inputs=True, seed=seed)
