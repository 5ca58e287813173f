"""The kernels on a CUDA device at the real shapes of Llama-3.2-1B, Qwen3-1.7B and gemma-3-1b,
in bf16 (and fp16/fp32 where the numerics differ), against their torch references (the RoPE
kernels with the fused KV write also against the kernels they replace, bit for bit); and the
``triton`` backend through the conformance suite in bf16. Run with ``pytest -m gpu``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.testing import AttentionBackendConformance
from tests.kernels import cases

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = "cuda"
# (hidden, intermediate, q heads, kv heads, head dim, sliding window)
SHAPES = {
    "llama-3.2-1b": (2048, 8192, 32, 8, 64, None),
    "qwen3-1.7b": (2048, 6144, 16, 8, 128, None),
    "gemma-3-1b": (1152, 6912, 4, 1, 256, 512),
}
DTYPES = [torch.bfloat16, torch.float32]  # fp16 runs under the interpreter on the CPU
SEEDS = st.integers(0, 2**16)
FEW = settings(max_examples=6, deadline=None)


@pytest.mark.parametrize("model", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_real_shapes(model, dtype):
    hidden, _, hq, _, head_dim, _ = SHAPES[model]
    for rows, cols, heads in ((4096, hidden, 1), (7, hidden, 1), (513, head_dim, hq)):
        for gemma in (False, True):
            for residual in (False, True):
                cases.check_rms_norm(CUDA, dtype, rows, cols, gemma=gemma, residual=residual and heads == 1,
                                     heads=heads, seed=rows + cols)


@pytest.mark.parametrize("model", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_real_shapes(model, dtype):
    _, _, hq, hkv, head_dim, _ = SHAPES[model]
    for tokens in (1, 64, 4096):
        cases.check_rotary(CUDA, dtype, tokens, hq, hkv, head_dim, max_pos=8192, theta=500_000.0, seed=tokens)


@pytest.mark.parametrize("model", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_qk_norm_rope_real_shapes(model, dtype):
    """Decode batches and a prefill, views into the fused qkv row, both norm numerics (Qwen 3's
    and Gemma 3's), against the reference and the separate rms_norm + rotary kernels."""
    _, _, hq, hkv, head_dim, _ = SHAPES[model]
    for tokens in (1, 64, 4096):
        for gemma in (False, True):
            cases.check_qk_norm_rope(CUDA, dtype, tokens, hq, hkv, head_dim, gemma=gemma, max_pos=8192,
                                     seed=tokens)


@FEW
@given(tokens=st.integers(1, 600), kv_heads=st.sampled_from([1, 2, 4, 8]), group=st.sampled_from([1, 2, 4, 5, 8]),
       head_dim=st.sampled_from([64, 128, 256]), gemma=st.booleans(), fused_qkv=st.booleans(),
       block_h=st.sampled_from([None, 1, 4, 16]), seed=SEEDS)
def test_qk_norm_rope_random_shapes(tokens, kv_heads, group, head_dim, gemma, fused_qkv, block_h, seed):
    cases.check_qk_norm_rope(CUDA, torch.bfloat16, tokens, kv_heads * group, kv_heads, head_dim, gemma=gemma,
                             fused_qkv=fused_qkv, pad=24, block_h=block_h, max_pos=8192, seed=seed)


# (q heads, kv heads, head dim) of the two models whose decode the fused KV write is for
ROPE_KV_SHAPES = {"llama-3.2-1b": (32, 8, 64), "qwen3-0.6b": (16, 8, 128)}


@pytest.mark.parametrize("model", ROPE_KV_SHAPES)
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("fp8", [False, True])
def test_rope_kv_write_real_shapes(model, qk_norm, fp8):
    """RoPE (Llama) and QK-norm + RoPE (Qwen 3; both kernels at both shapes) with the KV write
    fused, in bf16: bit for bit the kernel alone followed by ``write_kv`` (q, k, v, the whole
    cache, padding slots skipped), and the torch references within tolerance."""
    hq, hkv, head_dim = ROPE_KV_SHAPES[model]
    for tokens in (1, 7, 300):
        for block_size in (16, 4096):
            cases.check_rope_kv_write(CUDA, torch.bfloat16, tokens, hq, hkv, head_dim, qk_norm=qk_norm,
                                      block_size=block_size, fp8=fp8, pad=24, max_pos=8192, seed=tokens,
                                      same_variants=False)


@pytest.mark.parametrize("model", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_and_mul_real_shapes(model, dtype):
    _, inter, *_ = SHAPES[model]
    for rows in (1, 300, 4096):
        for act in ("silu", "gelu_tanh"):
            cases.check_act_and_mul(CUDA, dtype, rows, inter, act=act, seed=rows)


@pytest.mark.parametrize("model", SHAPES)
@pytest.mark.parametrize("fp8", [False, True])
def test_kv_cache_write_real_shapes(model, fp8):
    _, _, _, hkv, head_dim, _ = SHAPES[model]
    for dtype in (torch.bfloat16, torch.float16):
        for tokens, block_size in ((4096, 16), (64, 16), (300, 4096)):
            cases.check_kv_write(CUDA, dtype, tokens, hkv, head_dim, block_size=block_size, fp8=fp8,
                                 exact_fp8_inputs=False, seed=tokens)


@pytest.mark.parametrize("model", SHAPES)
@pytest.mark.parametrize(("fp8", "block_size"), [(False, 16), (False, 0), (True, 16)])
def test_paged_attention_real_shapes(model, fp8, block_size):
    """Mixed prefill chunks over cached context and decodes; decode-only batches (split-KV
    chosen by the wrapper, and forced)."""
    _, _, hq, hkv, head_dim, window = SHAPES[model]
    mixed = cases.AttentionCase(hq, hkv, head_dim, block_size, (0, 700, 1500, 3000, 17, 2000),
                                (1024, 300, 1, 1, 1, 64), sliding_window=window, fp8=fp8, seed=1)
    cases.check_paged_attention(CUDA, torch.bfloat16, mixed)
    decode = cases.AttentionCase(hq, hkv, head_dim, block_size, tuple(range(500, 4500, 250)), (1,) * 16,
                                 sliding_window=window, fp8=fp8, seed=2)
    cases.check_paged_attention(CUDA, torch.bfloat16, decode)
    forced = dataclasses.replace(decode, num_splits=5)
    cases.check_paged_attention(CUDA, torch.bfloat16, forced)


@FEW
@given(dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
       case=cases.attention_cases(head_dims=(64, 128, 256), max_context=600, max_query=300, max_requests=6,
                                  block_sizes=(1, 16, 2048)))
def test_paged_attention_random_batches(dtype, case):
    cases.check_paged_attention(CUDA, dtype, case)


@FEW
@given(tokens=st.integers(1, 300), heads=st.sampled_from([4, 16, 32]), splits=st.integers(2, 16),
       head_dim=st.sampled_from([64, 128, 256]), seed=SEEDS)
def test_attention_reduce_gpu(tokens, heads, splits, head_dim, seed):
    cases.check_attention_reduce(CUDA, tokens, heads, splits, head_dim, seed)


class TestTritonAttentionConformanceBF16(AttentionBackendConformance):
    name = "triton"
    device = CUDA
    dtype = torch.bfloat16
    head_dims = (64, 128, 256)
    atol = 3e-2
    max_examples = 5  # each new shape compiles the kernel; the shapes above cover the rest


@pytest.mark.parametrize(("rows", "cols", "dtype"), [(151_936, 1024, torch.bfloat16), (128_256, 2048, torch.bfloat16),
                                                     (262_144, 640, torch.float32), (4096, 257, torch.int32)])
def test_gather_rows_real_shapes(rows, cols, dtype):
    """The PDL row gather at embedding shapes (Qwen3-0.6B, Llama-3.2-1B vocabularies) and a
    block table's (int32, a width below the row's): an exact copy, int32 and int64 indices."""
    from infer_core.kernels.gather_rows import gather_rows, gather_rows_ref

    src = (torch.randn(rows, cols, device="cuda") * 1000).to(dtype)
    for index in (torch.randint(0, rows, (1,), device="cuda"), torch.randint(0, rows, (300,), device="cuda").int()):
        assert torch.equal(gather_rows(src, index), gather_rows_ref(src, index))
        assert torch.equal(gather_rows(src, index, cols // 2), gather_rows_ref(src, index, cols // 2))


def test_gather_rows_with_the_placeholder_fill():
    """A decode graph's block-table rows and placeholder fill in one launch (``fill``), at a
    graph's batch of 256 rows: the rows as without it, the ids as fill_ids_ref leaves them."""
    from infer_core.kernels.fill_ids import fill_ids_ref
    from infer_core.kernels.gather_rows import gather_rows, gather_rows_ref

    table = torch.randint(0, 10_000, (512, 2560), dtype=torch.int32, device="cuda")
    index = torch.randperm(512, device="cuda")[:256]
    ids = torch.randint(0, 150_000, (256,), device="cuda")
    fill_src = torch.where(torch.rand(256, device="cuda") < 0.7, torch.randperm(256, device="cuda"),
                           torch.full((256,), -1, device="cuda")).int()
    sampled = torch.randint(0, 150_000, (256,), device="cuda")
    want = ids.clone()
    fill_ids_ref(want, fill_src, sampled)
    assert torch.equal(gather_rows(table, index, 40, fill=(ids, fill_src, sampled)), gather_rows_ref(table, index, 40))
    assert torch.equal(ids, want)
