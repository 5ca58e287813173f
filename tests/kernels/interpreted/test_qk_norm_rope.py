"""The fused QK-norm + RoPE kernel against its torch reference and against the separate
RMSNorm and RoPE kernels, under the Triton interpreter (fp32 and fp16): q and k as strided
views into a fused qkv row (with padding after it) or as separate tensors, GQA, head dims
64-256, both norm numerics, and forced head blocks that straddle the q/k boundary."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels.qk_norm_rope import heads_per_program
from tests.kernels import cases


@settings(max_examples=20, deadline=None)
@given(dtype=st.sampled_from([torch.float32, torch.float16]), tokens=st.integers(1, 4),
       kv_heads=st.sampled_from([1, 2, 3, 4]), group=st.sampled_from([1, 2, 3, 4, 8]),
       head_dim=st.sampled_from([64, 128, 256]), gemma=st.booleans(), fused_qkv=st.booleans(),
       pad=st.sampled_from([0, 8, 40]), block_h=st.sampled_from([None, 1, 2, 4, 16]),
       seed=st.integers(0, 2**16))
def test_qk_norm_rope(dtype, tokens, kv_heads, group, head_dim, gemma, fused_qkv, pad, block_h, seed):
    cases.check_qk_norm_rope("cpu", dtype, tokens, kv_heads * group, kv_heads, head_dim, gemma=gemma,
                             fused_qkv=fused_qkv, pad=pad, block_h=block_h, seed=seed)


def test_empty_batch():
    cases.check_qk_norm_rope("cpu", torch.float32, 0, 4, 2, 64, gemma=False)


def test_heads_per_program():
    assert heads_per_program(1, 16 + 8, 128) == 2  # decode: short programs
    assert heads_per_program(4096, 32 + 8, 64) == 16  # 48 slots for 40 heads
    assert heads_per_program(4096, 16 + 8, 128) == 16  # 32 slots for 24 heads (a quarter idle)
    assert heads_per_program(4096, 4 + 1, 256) == 2  # not 8 slots (3 idle) for 5 heads
    assert heads_per_program(4096, 64 + 8, 256) == 8  # capped at 2048 elements per program
