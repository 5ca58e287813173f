"""Kernel checks shared by the interpreter tests (CPU, small shapes, fp32/fp16) and the GPU
tests (real shapes, bf16): each ``check_*`` runs a Triton kernel and its torch reference on
the same fresh random inputs and compares; outputs are poisoned with NaN first where the
kernel writes into a given buffer, so an element left unwritten fails."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from infer_core.attention.backend import AttentionLayer
from infer_core.attention.metadata import AttentionMetadata, build_attention_metadata
from infer_core.kernels import (
    act_and_mul,
    kv_cache_write,
    paged_attention,
    qk_norm_rope,
    rms_norm,
    rotary,
)
from infer_core.kernels.attention_reduce import attention_reduce, attention_reduce_ref

FP8 = torch.float8_e4m3fn

# Elementwise kernels: a couple of units in the last place of the dtype.
ELEMENTWISE_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# Attention: the probabilities are rounded to the input dtype before the PV product.
ATTENTION_TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(gen: torch.Generator, *shape: int, device: str, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)


# -- RMSNorm ---------------------------------------------------------------------------------

def check_rms_norm(device: str, dtype: torch.dtype, rows: int, cols: int, *, gemma: bool,
                   residual: bool, heads: int, seed: int) -> None:
    """``heads > 1``: the input is a strided ``[rows, heads, cols]`` view, as QK-norm sees."""
    gen = generator(seed)
    base = randn(gen, rows, heads + 1, cols, device=device, dtype=dtype, scale=3.0)
    x = base[:, 1:] if heads > 1 else base[:, 1]
    w = randn(gen, cols, device=device, dtype=dtype, scale=0.5 if gemma else 1.0)
    tol = ELEMENTWISE_TOL[dtype]
    if residual:
        r = randn(gen, *x.shape, device=device, dtype=dtype)
        out, res = rms_norm.fused_add_rms_norm(x, r, w, 1e-6, gemma)
        ref_out, ref_res = rms_norm.fused_add_rms_norm_ref(x, r, w, 1e-6, gemma)
        close(res, ref_res, 0.0)
        close(out, ref_out, tol)
    else:
        close(rms_norm.rms_norm(x, w, 1e-6, gemma), rms_norm.rms_norm_ref(x, w, 1e-6, gemma), tol)


# -- RoPE ------------------------------------------------------------------------------------

def rope_tables(head_dim: int, max_pos: int, theta: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    freqs = torch.outer(torch.arange(max_pos).float(), inv)
    return freqs.cos().to(device), freqs.sin().to(device)


def check_rotary(device: str, dtype: torch.dtype, tokens: int, q_heads: int, k_heads: int,
                 head_dim: int, *, max_pos: int, theta: float, seed: int) -> None:
    """q and k are views into one fused ``qkv`` row, as the models produce them."""
    gen = generator(seed)
    qkv = randn(gen, tokens, (q_heads + 2 * k_heads) * head_dim, device=device, dtype=dtype)
    q = qkv[:, : q_heads * head_dim].view(tokens, q_heads, head_dim)
    k = qkv[:, q_heads * head_dim: (q_heads + k_heads) * head_dim].view(tokens, k_heads, head_dim)
    v_before = qkv[:, (q_heads + k_heads) * head_dim:].clone()
    positions = torch.randint(0, max_pos, (tokens,), generator=gen).to(device)
    cos, sin = rope_tables(head_dim, max_pos, theta, device)
    q_ref, k_ref = q.clone(), k.clone()
    rotary.rotary_embedding(positions, q, k, cos, sin)
    rotary.rotary_embedding_ref(positions, q_ref, k_ref, cos, sin)
    tol = ELEMENTWISE_TOL[dtype]
    close(q, q_ref, tol)
    close(k, k_ref, tol)
    close(qkv[:, (q_heads + k_heads) * head_dim:], v_before, 0.0)  # v untouched


# -- QK-norm + RoPE --------------------------------------------------------------------------

def pair_ulps(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """``|actual - expected|`` in units in the last place (of ``expected``'s dtype) of each
    rotated pair's magnitude ``sqrt(x_i^2 + x_{i+D/2}^2)``, which the rotation preserves: an
    element that nearly cancels is measured against the scale its inputs had."""
    finfo = torch.finfo(expected.dtype)
    e = expected.float()
    half = e.shape[-1] // 2
    r = torch.sqrt(e[..., :half] ** 2 + e[..., half:] ** 2)
    ulp = torch.ldexp(torch.full_like(r, finfo.eps / 2), torch.frexp(r).exponent)
    ulp = ulp.clamp_min(finfo.smallest_normal * finfo.eps)
    return (actual.float() - e).abs() / torch.cat((ulp, ulp), dim=-1)


def check_qk_norm_rope(device: str, dtype: torch.dtype, tokens: int, q_heads: int, k_heads: int,
                       head_dim: int, *, gemma: bool, fused_qkv: bool = True, pad: int = 0,
                       block_h: int | None = None, max_pos: int = 64, seed: int = 0) -> None:
    """The fused kernel against its reference and against the separate kernels it replaces
    (``rms_norm`` on q and on k, then ``rotary_embedding``). ``fused_qkv``: q and k are views
    into one ``[T, (Hq + 2 Hkv) * D + pad]`` projection output, as the models produce them
    (v must stay untouched); otherwise separate contiguous tensors.

    Against the separate kernels: at most 2 units in the last place of the pair magnitude in
    fp16 / bf16 (the norm's float32 sum runs in another order, which now and then flips the
    rounding of the normed value; the rotation then adds one more rounding) and at most 1 %
    of the elements differ at all; in float32 the order of the sum is the whole difference
    (a few ulps)."""
    gen = generator(seed)
    qs, ks = q_heads * head_dim, k_heads * head_dim
    if fused_qkv:
        qkv = randn(gen, tokens, qs + 2 * ks + pad, device=device, dtype=dtype, scale=3.0)
        q = qkv[:, :qs].view(tokens, q_heads, head_dim)
        k = qkv[:, qs: qs + ks].view(tokens, k_heads, head_dim)
        rest_before = qkv[:, qs + ks:].clone()
    else:
        q = randn(gen, tokens, q_heads, head_dim, device=device, dtype=dtype, scale=3.0)
        k = randn(gen, tokens, k_heads, head_dim, device=device, dtype=dtype, scale=3.0)
    q_w = randn(gen, head_dim, device=device, dtype=dtype, scale=0.5 if gemma else 1.0)
    k_w = randn(gen, head_dim, device=device, dtype=dtype, scale=0.5 if gemma else 1.0)
    positions = torch.randint(0, max_pos, (tokens,), generator=gen).to(device)
    cos, sin = rope_tables(head_dim, max_pos, 10_000.0, device)
    eps = 1e-6

    q_ref, k_ref = q.clone(), k.clone()
    qk_norm_rope.qk_norm_rope_ref(positions, q_ref, k_ref, q_w, k_w, cos, sin, eps, gemma)
    q_sep = rms_norm.rms_norm(q, q_w, eps, gemma)
    k_sep = rms_norm.rms_norm(k, k_w, eps, gemma)
    rotary.rotary_embedding(positions, q_sep, k_sep, cos, sin)
    qk_norm_rope.qk_norm_rope(positions, q, k, q_w, k_w, cos, sin, eps, gemma, block_h=block_h)

    tol = ELEMENTWISE_TOL[dtype]
    close(q, q_ref, tol)
    close(k, k_ref, tol)
    if fused_qkv:
        close(qkv[:, qs + ks:], rest_before, 0.0)  # v (and padding) untouched
    ulps = 8.0 if dtype == torch.float32 else 2.0
    for fused, separate in ((q, q_sep), (k, k_sep)):
        if fused.numel() == 0:
            continue
        worst = pair_ulps(fused, separate).max().item()
        assert worst <= ulps, f"fused vs separate kernels: {worst} ulps"
        if dtype != torch.float32:
            differ = (fused != separate).float().mean().item()
            assert differ <= 0.01, f"{differ:.2%} of the elements differ from the separate kernels"


# -- RoPE / QK-norm + RoPE with the KV-cache write fused ---------------------------------------

def check_rope_kv_write(device: str, dtype: torch.dtype, tokens: int, q_heads: int, k_heads: int,
                        head_dim: int, *, qk_norm: bool, block_size: int, fp8: bool, gemma: bool = False,
                        block_h: int | None = None, pad: int = 0, max_pos: int = 64, seed: int = 0,
                        against_refs: bool = True, fp8_against_ref: bool = True,
                        same_variants: bool = True) -> None:
    """``rotary_embedding`` (or ``qk_norm_rope``) with a ``KVWrite`` against the same kernel
    without one followed by ``write_kv``, on q, k, v viewed in one ``[T, (Hq + 2 Hkv) * D + pad]``
    projection row: v and the padding untouched; the cache holds exactly ``write_kv`` of the k
    the fused kernel left in place (bit for bit: the fused store is ``write_kv``'s arithmetic on
    the same values) and keeps its poison outside the written slots (a quarter of the tokens
    are padding, slot -1); q and k (and so the cache) equal the kernel without the write bit
    for bit where ``same_variants`` (the interpreter). On a GPU the two compiled variants may
    contract the rotation's multiply-adds differently: there at most 2 ulps and 1 % of the
    elements may differ (as the fused QK-norm + RoPE against the separate kernels). ``against_refs``: also the torch references
    (rotation, then ``write_kv_ref``) within ``ELEMENTWISE_TOL``; an FP8 cache within one e4m3
    step (a last-place difference of k can move the rounding to e4m3), unless
    ``fp8_against_ref`` is off: the Triton interpreter rounds float -> e4m3 wrongly near binade
    edges (see :func:`check_kv_write`), so there only the bitwise comparisons hold."""
    gen = generator(seed)
    qs, ks = q_heads * head_dim, k_heads * head_dim
    qkv = randn(gen, tokens, qs + 2 * ks + pad, device=device, dtype=dtype, scale=3.0 if qk_norm else 1.0)

    def views(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (row[:, :qs].view(tokens, q_heads, head_dim), row[:, qs: qs + ks].view(tokens, k_heads, head_dim),
                row[:, qs + ks: qs + 2 * ks].view(tokens, k_heads, head_dim))

    q_w = randn(gen, head_dim, device=device, dtype=dtype, scale=0.5 if gemma else 1.0)
    k_w = randn(gen, head_dim, device=device, dtype=dtype, scale=0.5 if gemma else 1.0)
    positions = torch.randint(0, max_pos, (tokens,), generator=gen).to(device)
    cos, sin = rope_tables(head_dim, max_pos, 10_000.0, device)
    num_blocks = tokens // block_size + 2
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[torch.rand(tokens, generator=gen) < 0.25] = -1
    slots = slots.to(device)
    cache_dtype = FP8 if fp8 else dtype
    poison = torch.full((2, num_blocks, block_size, k_heads, head_dim), 7.0).to(device=device, dtype=cache_dtype)
    scales = torch.tensor([0.25, 2.0], device=device) if fp8 else None

    def rope(q, k, kv=None):
        if qk_norm:
            qk_norm_rope.qk_norm_rope(positions, q, k, q_w, k_w, cos, sin, 1e-6, gemma, block_h=block_h, kv=kv)
        else:
            rotary.rotary_embedding(positions, q, k, cos, sin, kv=kv)

    def bits(cache: torch.Tensor) -> torch.Tensor:
        return cache.view(torch.uint8) if fp8 else cache

    before = qkv.clone()
    sep_row, sep_cache = qkv.clone(), poison.clone()
    q_sep, k_sep, v_sep = views(sep_row)
    rope(q_sep, k_sep)
    kv_cache_write.write_kv(sep_cache, k_sep, v_sep, slots, scales)
    cache = poison.clone()
    q, k, v = views(qkv)
    rope(q, k, kv_cache_write.KVWrite(v, cache, slots, scales))

    assert torch.equal(qkv[:, qs + ks:], before[:, qs + ks:]), "v or the padding after it changed"
    stored = poison.clone()
    kv_cache_write.write_kv(stored, k, v, slots, scales)
    assert torch.equal(bits(cache), bits(stored)), "the cache differs from write_kv of the k left in place"
    if same_variants:
        assert torch.equal(qkv, sep_row), "q / k differ from the kernel without the KV write"
        assert torch.equal(bits(cache), bits(sep_cache)), "the cache differs from rope + write_kv"
    else:
        for fused, separate in ((q, q_sep), (k, k_sep)):
            if fused.numel() == 0:
                continue
            worst = pair_ulps(fused, separate).max().item()
            assert worst <= 2.0, f"fused vs the kernel without the KV write: {worst} ulps"
            differ = (fused != separate).float().mean().item()
            assert differ <= 0.01, f"{differ:.2%} of the elements differ from the kernel without the KV write"
    flat, flat_poison = (c.view(2, -1, k_heads, head_dim) for c in (bits(cache), bits(poison)))
    untouched = torch.ones(flat.shape[1], dtype=torch.bool, device=device)
    untouched[slots[slots >= 0]] = False
    assert torch.equal(flat[:, untouched], flat_poison[:, untouched]), "a padding or unused slot was written"
    if not against_refs:
        return

    q_ref, k_ref, _ = (x.clone() for x in views(before))
    if qk_norm:
        qk_norm_rope.qk_norm_rope_ref(positions, q_ref, k_ref, q_w, k_w, cos, sin, 1e-6, gemma)
    else:
        rotary.rotary_embedding_ref(positions, q_ref, k_ref, cos, sin)
    tol = ELEMENTWISE_TOL[dtype]
    close(q, q_ref, tol)
    close(k, k_ref, tol)
    cache_ref = poison.clone()
    kv_cache_write.write_kv_ref(cache_ref, k_ref, v, slots, scales)
    if fp8 and fp8_against_ref:
        per_half = scales.view(2, 1, 1, 1, 1)
        torch.testing.assert_close(cache.float() * per_half, cache_ref.float() * per_half,
                                   rtol=0.125 + tol, atol=2.0 * 2**-9 + tol)
    elif not fp8:
        close(cache, cache_ref, tol)


# -- gated activations -----------------------------------------------------------------------

def check_act_and_mul(device: str, dtype: torch.dtype, rows: int, cols: int, *, act: str, seed: int) -> None:
    gen = generator(seed)
    x = randn(gen, rows, 2 * cols, device=device, dtype=dtype, scale=3.0)
    fn, ref = {
        "silu": (act_and_mul.silu_and_mul, act_and_mul.silu_and_mul_ref),
        "gelu_tanh": (act_and_mul.gelu_tanh_and_mul, act_and_mul.gelu_tanh_and_mul_ref),
    }[act]
    close(fn(x), ref(x), ELEMENTWISE_TOL[dtype])


# -- KV-cache write --------------------------------------------------------------------------

def check_kv_write(device: str, dtype: torch.dtype, tokens: int, heads: int, head_dim: int, *,
                   block_size: int, fp8: bool, exact_fp8_inputs: bool, seed: int) -> None:
    """Some slots are -1 (padding) and must be skipped. ``exact_fp8_inputs``: draw values that
    e4m3 holds exactly after scaling (the Triton interpreter rounds float -> fp8 wrongly near
    binade edges; on the GPU the hardware conversion is compared with torch's bit for bit)."""
    gen = generator(seed)
    num_blocks = tokens // block_size + 2
    cache_dtype = FP8 if fp8 else dtype
    poison = torch.full((2, num_blocks, block_size, heads, head_dim), 7.0).to(device=device, dtype=cache_dtype)
    kv_cache, kv_ref = poison.clone(), poison.clone()
    scales = torch.tensor([0.25, 2.0], device=device) if fp8 else None

    def values(scale: float) -> torch.Tensor:
        x = torch.randn(tokens, heads, head_dim, generator=gen) * 4
        x[0, 0, 0] = 1e4  # beyond e4m3's range after scaling: saturates to 448
        if fp8 and exact_fp8_inputs:
            x = (x / scale).clamp(-448, 448).to(FP8).float() * scale
        return x.to(device=device, dtype=dtype)

    k = values(0.25)
    v = values(2.0)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[torch.rand(tokens, generator=gen) < 0.2] = -1
    slots = slots.to(device)
    kv_cache_write.write_kv(kv_cache, k, v, slots, scales)
    kv_cache_write.write_kv_ref(kv_ref, k, v, slots, scales)
    assert torch.equal(kv_cache.view(torch.uint8) if fp8 else kv_cache,
                       kv_ref.view(torch.uint8) if fp8 else kv_ref)


# -- paged attention -------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionCase:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int  # 0: one block as long as the longest sequence (the contiguous cache)
    context_lens: tuple[int, ...]
    query_lens: tuple[int, ...]
    sliding_window: int | None = None
    softcap: float | None = None
    fp8: bool = False
    num_splits: int | None = None  # None: the wrapper's choice
    seed: int = 0


@st.composite
def attention_cases(draw, *, head_dims=(16, 32, 64), max_context=48, max_query=24, max_requests=4,
                    decode_only: bool | None = None, block_sizes=(1, 4, 16, 0)) -> AttentionCase:
    num_kv_heads = draw(st.sampled_from([1, 2]))
    requests = draw(st.integers(1, max_requests))
    decodes = draw(st.booleans()) if decode_only is None else decode_only
    q_lens = [1] * requests if decodes else draw(
        st.lists(st.integers(1, max_query), min_size=requests, max_size=requests))
    return AttentionCase(
        num_heads=num_kv_heads * draw(st.sampled_from([1, 2, 3, 4, 8])),
        num_kv_heads=num_kv_heads,
        head_dim=draw(st.sampled_from(head_dims)),
        block_size=draw(st.sampled_from(block_sizes)),
        context_lens=tuple(draw(st.lists(st.integers(0, max_context), min_size=requests, max_size=requests))),
        query_lens=tuple(q_lens),
        sliding_window=draw(st.one_of(st.none(), st.integers(1, 40))),
        softcap=draw(st.one_of(st.none(), st.just(20.0))),
        fp8=draw(st.booleans()),
        num_splits=draw(st.sampled_from([None, 1, 3])),
        seed=draw(st.integers(0, 2**16)),
    )


def attention_inputs(case: AttentionCase, device: str, dtype: torch.dtype):
    """A shuffled block pool filled with random K/V (or random e4m3 with scales), queries, and
    the metadata of one flat batch of ``case``'s requests."""
    gen = generator(case.seed)
    seq_lens = [c + q for c, q in zip(case.context_lens, case.query_lens, strict=True)]
    block_size = case.block_size or max(seq_lens)
    per_request = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(per_request) + 2
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables = []
    for n in per_request:
        tables.append(order[:n])
        order = order[n:]
    shape = (2, num_blocks, block_size, case.num_kv_heads, case.head_dim)
    scales = None
    if case.fp8:
        kv_cache = (torch.randn(*shape, generator=gen) * 8).to(FP8).to(device)
        scales = torch.tensor([0.125, 0.5], device=device)
    else:
        kv_cache = randn(gen, *shape, device=device, dtype=dtype)
    q = randn(gen, sum(case.query_lens), case.num_heads, case.head_dim, device=device, dtype=dtype, scale=2.0)
    md = build_attention_metadata(list(case.query_lens), seq_lens, tables, block_size, device)
    layer = AttentionLayer(case.num_heads, case.num_kv_heads, case.head_dim, case.head_dim ** -0.5,
                           case.sliding_window, case.softcap)
    return layer, q, kv_cache, md, scales


def launch_config(case: AttentionCase, layer: AttentionLayer, md: AttentionMetadata,
                  device: str, dtype: torch.dtype) -> paged_attention.LaunchConfig:
    cfg = paged_attention.choose_config(layer, md, torch.device(device), dtype, FP8 if case.fp8 else dtype)
    if case.num_splits is not None:
        cfg = paged_attention.LaunchConfig(cfg.block_m, cfg.tile, cfg.num_warps, cfg.num_stages, case.num_splits)
    return cfg


def check_paged_attention(device: str, dtype: torch.dtype, case: AttentionCase) -> None:
    layer, q, kv_cache, md, scales = attention_inputs(case, device, dtype)
    cfg = launch_config(case, layer, md, device, dtype)
    out = torch.full_like(q, float("nan"))
    paged_attention.paged_attention(layer, q, kv_cache, md, scales, config=cfg, out=out)
    ref = paged_attention.paged_attention_ref(layer, q, kv_cache, md, scales)
    close(out, ref, ATTENTION_TOL[dtype])


def check_attention_reduce(device: str, tokens: int, heads: int, splits: int, head_dim: int, seed: int) -> None:
    gen = generator(seed)
    block_d = max(16, 1 << (head_dim - 1).bit_length())
    acc = randn(gen, tokens, heads, splits, block_d, device=device, dtype=torch.float32)
    m = randn(gen, tokens, heads, splits, device=device, dtype=torch.float32, scale=4.0)
    m[..., 1:][torch.rand(tokens, heads, splits - 1, generator=gen).to(device) < 0.3] = float("-inf")
    sums = torch.rand(tokens, heads, splits, generator=gen).to(device) + 0.5
    m[0, 0] = float("-inf")  # a row that saw no key in any split (a CUDA-graph padding row)
    sums[m == float("-inf")] = 0.0
    acc[m == float("-inf")] = 0.0
    out = torch.full((tokens, heads, head_dim), float("nan"), device=device)
    ref = torch.empty_like(out)
    attention_reduce(out, acc, m, sums)
    attention_reduce_ref(ref, acc, m, sums)
    assert torch.equal(out[0, 0], torch.zeros_like(out[0, 0])), "a row with no key must give 0, not NaN"
    close(out, ref, 1e-5)
