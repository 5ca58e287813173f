"""The small-M GEMM with RMSNorm (and the residual add) in its prologue
(``small_m_gemm(x, w, norm=NormPrologue(...))``) under the Triton interpreter, against the
unfused pair ``fused_add_rms_norm`` (or ``rms_norm``) then ``small_m_gemm``, and against the
torch references: hypothesis over M 1-16, N and K off the block sizes, fp32 / fp16 / bf16,
Gemma's ``1 + w`` or not, with and without a residual, eps, forced configs (broadcast,
split-K, ``tl.dot`` for fp32 / fp16), strided ``x`` and residual rows. The new residual is
compared bit for bit with ``fused_add_rms_norm``'s; the normalized input itself, exposed
through an identity weight, element by element with ``rms_norm``'s output.

Tolerances (``tests/kernels/small_m.py``): against the unfused pair, with the same launch
config (the same float32 summation of products), the product's input differs only where
the norm's ``rstd``, summed over K tiles instead of one block, differs in its last float32
bit and flips a rounding: rare, at most a couple of ulps of that element, hence a slack of
``4 u_x (|x'| @ |w|.T)`` in fp16 / bf16 (none in fp32, where the summation term covers it).
Against the torch references, ``x'`` may differ by a few ulps more (the interpreter truncates
float32 -> bf16 at the residual add and at both roundings of the norm), so ``8 u_x``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels.rms_norm import (
    fused_add_rms_norm,
    fused_add_rms_norm_ref,
    rms_norm,
    rms_norm_ref,
)
from infer_core.kernels.small_m_gemm import (
    LaunchConfig,
    NormPrologue,
    choose_config,
    small_m_gemm,
    small_m_gemm_ref,
)
from tests.kernels.small_m import UNIT_ROUNDOFF, assert_within, interpretable

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make(gen: torch.Generator, m: int, n: int, k: int, dtype: torch.dtype, *, residual: bool, gemma: bool,
         row_pad: int = 0, identity: bool = False):
    """``x`` and the residual with a row stride of ``k + row_pad``; the norm weight around 1
    (Llama / Qwen) or around 0 (Gemma's offset); the GEMM weight ``[n, k]``, or ``I_k``."""
    x = (3 * torch.randn(m, k + row_pad, generator=gen))[:, :k].to(dtype)
    r = torch.randn(m, k + row_pad, generator=gen)[:, :k].to(dtype) if residual else None
    nw = (0.5 * torch.randn(k, generator=gen) + (0.0 if gemma else 1.0)).to(dtype)
    w = torch.eye(k) if identity else torch.randn(n, k, generator=gen) / math.sqrt(max(k, 1))
    return x, r, nw, w.to(dtype)


def unfused(x, r, nw, eps, gemma):
    """The two-launch path's normalized input and new residual, and the torch references'."""
    if r is None:
        return rms_norm(x, nw, eps, gemma), None, rms_norm_ref(x, nw, eps, gemma), None
    xn, h = fused_add_rms_norm(x, r, nw, eps, gemma)
    xn_ref, h_ref = fused_add_rms_norm_ref(x, r, nw, eps, gemma)
    return xn, h, xn_ref, h_ref


def check(x, r, nw, w, eps: float, gemma: bool, cfg: LaunchConfig | None):
    m, (n, k) = x.shape[0], w.shape
    cfg = interpretable(cfg, m, n, k, x.dtype, norm=True)
    y, h = small_m_gemm(x, w, norm=NormPrologue(nw, eps, gemma, r), config=cfg)
    xn, h_unfused, xn_ref, h_ref = unfused(x, r, nw, eps, gemma)
    if r is None:
        assert h is None
    else:
        assert h.shape == (m, k) and h.is_contiguous()
        assert torch.equal(h, h_unfused)  # the new residual, bit for bit
        torch.testing.assert_close(h, h_ref, atol=0, rtol=2 * UNIT_ROUNDOFF[x.dtype] if x.dtype == torch.bfloat16 else 0)
    slack = 0 if x.dtype == torch.float32 else 4
    assert_within(y, small_m_gemm(xn, w, config=cfg), xn, w, slack=slack)  # the unfused pair
    assert_within(y, small_m_gemm_ref(xn, w), xn, w, slack=slack)
    assert_within(y, small_m_gemm_ref(xn_ref, w), xn_ref, w, slack=2 * slack)  # the torch references
    return y, h


@st.composite
def configs(draw: st.DrawFn, dtype: torch.dtype) -> LaunchConfig | None:
    kind = draw(st.sampled_from(["chosen", "broadcast", "split", "dot"]))
    if kind == "chosen":
        return None
    use_dot = kind == "dot" and dtype != torch.bfloat16
    block_n = draw(st.sampled_from([16, 32] if use_dot else [2, 4, 8, 16]))
    block_k = draw(st.sampled_from([16, 32, 64, 128]))
    split_k = draw(st.sampled_from([2, 4, 8])) if kind == "split" else 1
    return LaunchConfig(block_n, block_k, split_k, use_dot=use_dot)


@st.composite
def cases(draw: st.DrawFn):
    dtype = draw(st.sampled_from(DTYPES))
    m = draw(st.integers(1, 16))
    n = draw(st.integers(1, 48))
    k = draw(st.one_of(st.integers(1, 70), st.sampled_from([64, 128, 256]), st.integers(1, 300)))
    residual = draw(st.booleans())
    gemma = draw(st.booleans())
    eps = draw(st.sampled_from([1e-6, 1e-5, 0.5]))
    cfg = draw(configs(dtype))
    row_pad = draw(st.sampled_from([0, 0, 3]))
    seed = draw(st.integers(0, 2**16))
    return dtype, m, n, k, residual, gemma, eps, cfg, row_pad, seed


@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_norm_prologue_matches_unfused_and_reference(case):
    dtype, m, n, k, residual, gemma, eps, cfg, row_pad, seed = case
    x, r, nw, w = make(torch.Generator().manual_seed(seed), m, n, k, dtype, residual=residual, gemma=gemma,
                       row_pad=row_pad)
    check(x, r, nw, w, eps, gemma, cfg)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("cfg", [
    LaunchConfig(8, 64),  # K = 300: four full tiles and a partial one
    LaunchConfig(4, 32, split_k=4),  # every split computes the whole row's rstd
    LaunchConfig(16, 64, split_k=2, use_dot=True),  # (broadcast for bf16)
    LaunchConfig(8, 512),  # one tile wider than K
], ids=str)
def test_forced_configs(dtype, gemma, cfg):
    x, r, nw, w = make(torch.Generator().manual_seed(7), 5, 24, 300, dtype, residual=True, gemma=gemma, row_pad=5)
    check(x, r, nw, w, 0.25 if gemma else 1e-6, gemma, cfg)  # an eps that shows


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("cfg", [LaunchConfig(8, 64), LaunchConfig(16, 32, split_k=4, use_dot=True)], ids=str)
def test_normalized_input_equals_rms_norm(dtype, residual, gemma, cfg):
    """Through ``w = I`` the product is the prologue's normalized input itself (one nonzero
    float32 product per output): equal to ``rms_norm``'s output but where the two rstd
    summation orders flip a rounding (a few elements at most, within two ulps), so a dropped
    rounding or a wrong weight shows even where the product bound would hide it."""
    m, k = 5, 120
    x, r, nw, eye = make(torch.Generator().manual_seed(3), m, k, k, dtype, residual=residual, gemma=gemma,
                         row_pad=2, identity=True)
    got, _ = small_m_gemm(x, eye, norm=NormPrologue(nw, 1e-6, gemma, r), config=interpretable(cfg, m, k, k, dtype))
    xn = unfused(x, r, nw, 1e-6, gemma)[0]
    diff = (got.float() - xn.float()).abs()
    u = UNIT_ROUNDOFF[dtype]
    rel = 8 * math.sqrt(k) * u if dtype == torch.float32 else 4 * u  # fp32: rstd's summation order alone
    assert (diff <= rel * xn.float().abs()).all(), (diff / xn.float().abs().clamp_min(1e-30)).max()
    if dtype != torch.float32:
        assert int((diff > 0).sum()) <= 2, f"{int((diff > 0).sum())} of {diff.numel()} elements differ"


@pytest.mark.parametrize("dtype", DTYPES)
def test_m_above_16_and_even_k(dtype):
    gen = torch.Generator().manual_seed(4)
    for m in (16, 17, 37):  # beyond 16 rows: one program row per 16
        x, r, nw, w = make(gen, m, 12, 128, dtype, residual=True, gemma=False)
        check(x, r, nw, w, 1e-6, False, LaunchConfig(4, 64, split_k=2))
        check(x, r, nw, w, 1e-6, False, None)


@pytest.mark.parametrize("cfg", [None, LaunchConfig(4, 64, split_k=4), LaunchConfig(16, 64, split_k=2, use_dot=True)],
                         ids=str)
def test_bitwise_deterministic(cfg):
    x, r, nw, w = make(torch.Generator().manual_seed(11), 9, 40, 448, torch.float16, residual=True, gemma=False)
    norm = NormPrologue(nw, 1e-6, False, r)
    first, h = small_m_gemm(x, w, norm=norm, config=cfg)
    for _ in range(2):
        again, h2 = small_m_gemm(x, w, norm=norm, config=cfg)
        assert torch.equal(again, first) and torch.equal(h2, h)


def test_edges_and_errors():
    w, nw = torch.randn(8, 16), torch.randn(16)
    y, h = small_m_gemm(torch.randn(0, 16), w, norm=NormPrologue(nw, 1e-6, False, torch.randn(0, 16)))
    assert y.shape == (0, 8) and h.shape == (0, 16)
    x, r = torch.randn(3, 16), torch.randn(3, 16)
    y, h = small_m_gemm(x, torch.randn(0, 16), norm=NormPrologue(nw, 1e-6, False, r))  # no program: still h
    assert y.shape == (3, 0) and torch.equal(h, fused_add_rms_norm(x, r, nw, 1e-6)[1])
    y, h = small_m_gemm(torch.randn(3, 0), torch.randn(8, 0), norm=NormPrologue(torch.randn(0), 1e-6))
    assert torch.equal(y, torch.zeros(3, 8)) and h is None
    # x and residual with stride(-1) != 1
    x, r, nw, w = make(torch.Generator().manual_seed(1), 16, 5, 3, torch.float32, residual=True, gemma=False)
    check(x.t().contiguous().t(), r.t().contiguous().t(), nw, w, 1e-6, False, None)
    with pytest.raises(ValueError, match="either a norm prologue or act_and_mul, not both"):
        small_m_gemm(torch.randn(2, 32), w, act_and_mul="silu", norm=NormPrologue(nw, 1e-6))
    with pytest.raises(AssertionError):
        small_m_gemm(x, w, norm=NormPrologue(torch.randn(4), 1e-6))  # norm weight is [K]
    with pytest.raises(AssertionError):
        small_m_gemm(x, w, norm=NormPrologue(nw, 1e-6, residual=r.half()))  # residual in another dtype
    with pytest.raises(AssertionError):
        small_m_gemm(x, w, norm=NormPrologue(nw, 1e-6, residual=r[:1]))  # residual [M, K]


# Llama-3.2-1B and Qwen3-0.6B projections behind a norm: (N, K)
REAL = {"llama qkv": (3072, 2048), "llama gate_up": (16384, 2048), "qwen qkv": (4096, 1024),
        "qwen gate_up": (6144, 1024)}


@pytest.mark.parametrize("m", [1, 2, 4, 16])
def test_choose_config_at_real_shapes(m):
    for n, k in REAL.values():
        cfg = choose_config(m, n, k, torch.bfloat16, num_sms=132, norm=True)
        cfg.check()
        assert cfg.block_k <= k
        if m == 1:
            assert not cfg.use_dot and cfg.split_k == 1, cfg  # one launch at batch 1
            assert -(-n // cfg.block_n) >= 132, cfg  # at least one wave
