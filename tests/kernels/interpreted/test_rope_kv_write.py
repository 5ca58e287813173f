"""The KV-cache write fused into the RoPE kernels (``rotary_embedding`` and ``qk_norm_rope``
with a ``KVWrite``) under the Triton interpreter: bit for bit the kernel without the write
followed by ``write_kv`` (q, k, v, the whole cache, padding slots skipped), and the torch
references within the elementwise tolerances (the interpreter rounds float -> e4m3 wrongly near
binade edges and truncates float32 -> bf16, so FP8 caches and bf16 QK-norm, which rounds twice
before the rotation, are compared with the references only on the GPU); fp32/fp16/bf16 and FP8 (e4m3) caches, GQA down to
one KV head, head dims 64-256 and 80, any block size, empty batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels.kv_cache_write import KVWrite
from infer_core.kernels.rotary import rotary_embedding
from tests.kernels import cases


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), tokens=st.integers(0, 6),
       kv_heads=st.sampled_from([1, 2, 3]), group=st.sampled_from([1, 2, 4]),
       head_dim=st.sampled_from([64, 80, 128, 256]), block_size=st.sampled_from([1, 4, 16]),
       fp8=st.booleans(), qk_norm=st.booleans(), gemma=st.booleans(),
       block_h=st.sampled_from([None, 1, 2, 4]), pad=st.sampled_from([0, 8]), seed=st.integers(0, 2**16))
def test_fused_equals_rope_then_write_kv(dtype, tokens, kv_heads, group, head_dim, block_size, fp8, qk_norm,
                                         gemma, block_h, pad, seed):
    cases.check_rope_kv_write("cpu", dtype, tokens, kv_heads * group, kv_heads, head_dim, qk_norm=qk_norm,
                              gemma=gemma, block_h=block_h, block_size=block_size, fp8=fp8, pad=pad, seed=seed,
                              against_refs=not (qk_norm and dtype == torch.bfloat16), fp8_against_ref=False)


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("tokens", [0, 1])
def test_edges(qk_norm, fp8, tokens):
    """Empty and single-token batches; Hkv = 1 under a wide GQA group; with qk_norm a head block
    of 4 over 8 + 1 heads, so the one k head (and its v head) sits in the last, partial block."""
    cases.check_rope_kv_write("cpu", torch.float16, tokens, 8, 1, 64, qk_norm=qk_norm, block_h=4,
                              block_size=16, fp8=fp8, seed=tokens, fp8_against_ref=False)


def test_fp8_cache_needs_scales():
    q, k, v = torch.zeros(1, 2, 8), torch.zeros(1, 1, 8), torch.zeros(1, 1, 8)
    cache = torch.zeros(2, 1, 4, 1, 8, dtype=torch.float8_e4m3fn)
    cos = sin = torch.zeros(4, 4)
    with pytest.raises(AssertionError, match="fp8 KV needs kv_scales"):
        rotary_embedding(torch.zeros(1, dtype=torch.long), q, k, cos, sin, KVWrite(v, cache, torch.zeros(1, dtype=torch.long)))
