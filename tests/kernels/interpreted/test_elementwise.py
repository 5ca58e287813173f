"""RMSNorm (plain, fused residual add, Gemma ``1 + w``), RoPE and the gated activations
against their torch references, under the Triton interpreter (fp32 and fp16)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kernels import cases

DTYPES = st.sampled_from([torch.float32, torch.float16])
SEEDS = st.integers(0, 2**16)


@settings(max_examples=25, deadline=None)
@given(dtype=DTYPES, rows=st.integers(1, 9), cols=st.integers(1, 200), gemma=st.booleans(),
       residual=st.booleans(), heads=st.sampled_from([1, 3]), seed=SEEDS)
def test_rms_norm(dtype, rows, cols, gemma, residual, heads, seed):
    cases.check_rms_norm("cpu", dtype, rows, cols, gemma=gemma, residual=residual, heads=heads, seed=seed)


@settings(max_examples=20, deadline=None)
@given(dtype=DTYPES, tokens=st.integers(1, 9), kv_heads=st.integers(1, 3), group=st.integers(1, 4),
       head_dim=st.sampled_from([2, 8, 16, 64]), theta=st.sampled_from([10.0, 10_000.0, 1e6]), seed=SEEDS)
def test_rotary(dtype, tokens, kv_heads, group, head_dim, theta, seed):
    cases.check_rotary("cpu", dtype, tokens, kv_heads * group, kv_heads, head_dim,
                       max_pos=64, theta=theta, seed=seed)


@settings(max_examples=20, deadline=None)
@given(dtype=DTYPES, rows=st.integers(1, 9), cols=st.integers(1, 1500),
       act=st.sampled_from(["silu", "gelu_tanh"]), seed=SEEDS)
def test_act_and_mul(dtype, rows, cols, act, seed):
    cases.check_act_and_mul("cpu", dtype, rows, cols, act=act, seed=seed)
