"""The small-M GEMM with the gated activation in its epilogue (``small_m_gemm(x, w, gated=...)``,
``w [2I, K]`` = ``[gate; up]``, ``y [M, I]``) under the Triton interpreter, alone and with the
RMSNorm prologue (with and without a residual): hypothesis over M 1-16, I and K off the block
sizes, SiLU and GELU(tanh), fp32 / fp16 / bf16 (bf16 on the broadcast product only), forced
configs (both inner products; a ``split_k`` that the epilogue must ignore).

Against the unfused kernels with the same launch config (``small_m_gemm`` over the whole
``[2I, K]`` weight, then ``silu_and_mul`` / ``gelu_tanh_and_mul``): the same float32 sums
(per output element the same K tiles in the same order), the same roundings, the same
``gated`` arithmetic, so bit for bit with the broadcast product. With ``tl.dot`` the order
inside a tile's product is the implementation's (BLAS under the interpreter, the tensor cores
on a GPU) and may change with a row's place in the tile: the gated kernel holds a row's gate
and up in two tiles where the unfused one holds them in one, and a hypothesis case differed in
the last bit of a float32. So there the two agree within a few units in the last place of the
output. The new residual ``h`` is bit for bit the non-gated norm path's.

Against the torch references (``small_m_gemm_ref(..., gated=act)``, after ``fused_add_rms_norm_ref``
with the norm) the small-M bound carried through the activation
(``tests/kernels/small_m.py``'s ``assert_gated_within``), with a slack of ``8 u_x`` for the
norm's references as in ``test_small_m_gemm_norm.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels import act_and_mul as act_kernels
from infer_core.kernels.rms_norm import fused_add_rms_norm_ref, rms_norm_ref
from infer_core.kernels.small_m_gemm import (
    LaunchConfig,
    NormPrologue,
    choose_config,
    small_m_gemm,
    small_m_gemm_ref,
)
from tests.kernels.small_m import assert_gated_within, interpretable

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ACTS = ["silu", "gelu_tanh"]
ACT_KERNELS = {"silu": act_kernels.silu_and_mul, "gelu_tanh": act_kernels.gelu_tanh_and_mul}
NORMS = ["none", "norm", "residual"]  # no prologue; RMSNorm of x; of x + residual


def make(gen: torch.Generator, m: int, i: int, k: int, dtype: torch.dtype, norm: str, gemma: bool = False,
         row_pad: int = 0):
    """``x [m, k]`` (row stride ``k + row_pad``), the gate/up weight ``[2i, k]`` and, with a
    norm, its :class:`NormPrologue` (weight around 1, or around 0 for Gemma's ``1 + w``)."""
    x = (2 * torch.randn(m, k + row_pad, generator=gen))[:, :k].to(dtype)
    w = (torch.randn(2 * i, k, generator=gen) / math.sqrt(max(k, 1))).to(dtype)
    if norm == "none":
        return x, w, None
    nw = (0.5 * torch.randn(k, generator=gen) + (0.0 if gemma else 1.0)).to(dtype)
    r = torch.randn(m, k + row_pad, generator=gen)[:, :k].to(dtype) if norm == "residual" else None
    return x, w, NormPrologue(nw, 1e-6, gemma, r)


def unfused(x, w, norm: NormPrologue | None, act: str, cfg: LaunchConfig):
    """The two-launch path with the same config (never split): ``(act_and_mul(y), h)``."""
    y, h = (small_m_gemm(x, w, config=cfg), None) if norm is None else small_m_gemm(x, w, norm=norm, config=cfg)
    return ACT_KERNELS[act](y), h


def reference_input(x, norm: NormPrologue | None) -> torch.Tensor:
    """The product's input after the torch references of the norm."""
    if norm is None:
        return x
    if norm.residual is None:
        return rms_norm_ref(x, norm.weight, norm.eps, norm.gemma)
    return fused_add_rms_norm_ref(x, norm.residual, norm.weight, norm.eps, norm.gemma)[0]


def check(x, w, norm: NormPrologue | None, act: str, cfg: LaunchConfig | None) -> torch.Tensor:
    m, (n, k) = x.shape[0], w.shape
    cfg = interpretable(cfg, m, n // 2, k, x.dtype, norm=norm is not None, gated=True)
    got = small_m_gemm(x, w, gated=act, norm=norm, config=cfg)
    want, h_unfused = unfused(x, w, norm, act, LaunchConfig(cfg.block_n, cfg.block_k, 1, use_dot=cfg.use_dot))
    if norm is not None:
        got, h = got
        assert (h is None) == (norm.residual is None)
        if h is not None:
            assert torch.equal(h, h_unfused)  # the new residual, bit for bit
    assert got.shape == (m, n // 2) and got.dtype == x.dtype and got.is_contiguous()
    if cfg.use_dot:  # the same sums, each tile's inner order the dot implementation's
        ulp = torch.finfo(got.dtype).eps * want.float().abs().max().clamp_min(torch.finfo(torch.float32).tiny)
        assert (got.float() - want.float()).abs().max() <= 4 * ulp, (got - want).abs().max()
    else:
        assert torch.equal(got, want), (got - want).abs().max()  # the unfused kernels, bit for bit
    xp = reference_input(x, norm)
    assert_gated_within(got, small_m_gemm_ref(xp, w, gated=act), small_m_gemm_ref(xp, w), xp, w,
                        slack=0 if norm is None else 8)  # the torch references
    return got


@st.composite
def configs(draw: st.DrawFn, dtype: torch.dtype) -> LaunchConfig | None:
    kind = draw(st.sampled_from(["chosen", "broadcast", "dot"]))
    if kind == "chosen":
        return None
    use_dot = kind == "dot" and dtype != torch.bfloat16
    block_n = draw(st.sampled_from([16, 32] if use_dot else [1, 2, 4, 8, 16]))
    block_k = draw(st.sampled_from([16, 32, 64, 128]))
    split_k = draw(st.sampled_from([1, 1, 2, 4]))  # ignored: the epilogue never splits K
    return LaunchConfig(block_n, block_k, split_k, use_dot=use_dot)


@st.composite
def cases(draw: st.DrawFn):
    dtype = draw(st.sampled_from(DTYPES))
    m = draw(st.integers(1, 16))
    i = draw(st.integers(1, 40))
    k = draw(st.one_of(st.integers(1, 70), st.sampled_from([64, 128]), st.integers(1, 260)))
    norm = draw(st.sampled_from(NORMS))
    act = draw(st.sampled_from(ACTS))
    gemma = draw(st.booleans())
    cfg = draw(configs(dtype))
    row_pad = draw(st.sampled_from([0, 0, 3]))
    seed = draw(st.integers(0, 2**16))
    return dtype, m, i, k, norm, act, gemma, cfg, row_pad, seed


@settings(max_examples=50, deadline=None)
@given(case=cases())
def test_gated_epilogue_matches_unfused_and_reference(case):
    dtype, m, i, k, norm, act, gemma, cfg, row_pad, seed = case
    x, w, prologue = make(torch.Generator().manual_seed(seed), m, i, k, dtype, norm, gemma, row_pad)
    check(x, w, prologue, act, cfg)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("cfg", [
    LaunchConfig(4, 64),  # K = 300: four full tiles and a partial one
    LaunchConfig(2, 2048),  # the one-row config: one tile wider than K (SINGLE_TILE with the norm)
    LaunchConfig(16, 32, split_k=4, use_dot=True),  # split_k ignored; broadcast for bf16
], ids=str)
def test_forced_configs(dtype, norm, act, cfg):
    x, w, prologue = make(torch.Generator().manual_seed(7), 5, 19, 300, dtype, norm, gemma=act == "gelu_tanh",
                          row_pad=3)
    check(x, w, prologue, act, cfg)


@pytest.mark.parametrize("norm", NORMS)
def test_one_row_at_the_chosen_config(norm):
    """Batch-1 decode as the models run it: fp16 at ``choose_config``'s one-row config (two gate
    and two up rows per program), the weight's rows not a multiple of the block."""
    x, w, prologue = make(torch.Generator().manual_seed(5), 1, 45, 96, torch.float16, norm)
    cfg = choose_config(1, 45, 96, torch.float16, num_sms=4, norm=norm != "none", gated=True)
    assert cfg.block_n == (2 if norm != "none" else 1) and cfg.split_k == 1 and not cfg.use_dot
    check(x, w, prologue, "silu", None)


def test_split_k_is_ignored_and_the_result_deterministic():
    x, w, prologue = make(torch.Generator().manual_seed(11), 9, 25, 448, torch.float16, "residual")
    first, h = small_m_gemm(x, w, gated="silu", norm=prologue, config=LaunchConfig(4, 64))
    for cfg in (LaunchConfig(4, 64), LaunchConfig(4, 64, split_k=4)):
        again, h2 = small_m_gemm(x, w, gated="silu", norm=prologue, config=cfg)
        assert torch.equal(again, first) and torch.equal(h2, h)


def test_edges_and_errors():
    w = torch.randn(8, 16)
    assert small_m_gemm(torch.randn(0, 16), w, gated="silu").shape == (0, 4)
    assert torch.equal(small_m_gemm(torch.randn(3, 0), torch.randn(8, 0), gated="gelu_tanh"), torch.zeros(3, 4))
    x, r, nw = torch.randn(3, 16), torch.randn(3, 16), torch.randn(16)
    y, h = small_m_gemm(x, torch.randn(0, 16), gated="silu", norm=NormPrologue(nw, 1e-6, False, r))
    assert y.shape == (3, 0) and torch.equal(h, small_m_gemm(x, w, norm=NormPrologue(nw, 1e-6, False, r))[1])
    check(torch.randn(16, 3).t(), torch.randn(10, 16), None, "silu", None)  # x with stride(-1) != 1
    with pytest.raises(ValueError, match=r"either the act_and_mul prologue or the gated epilogue, not both "
                                         r"\(got act_and_mul='silu' and gated='silu'\)"):
        small_m_gemm(torch.randn(2, 32), w, act_and_mul="silu", gated="silu")
    with pytest.raises(ValueError, match=r"gated must be one of \['gelu_tanh', 'silu'\] or None, got 'relu'"):
        small_m_gemm(torch.randn(2, 16), w, gated="relu")
    with pytest.raises(AssertionError, match="needs weight"):
        small_m_gemm(torch.randn(2, 16), torch.randn(7, 16), gated="silu")  # not [2I, K]


# Llama-3.2-1B and Qwen3-0.6B gate/up projections: (I, K)
REAL = {"llama gate_up": (8192, 2048), "qwen gate_up": (3072, 1024)}


@pytest.mark.parametrize("m", [1, 2, 4, 16])
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
def test_choose_config_at_real_shapes(m, norm):
    for i, k in REAL.values():
        cfg = choose_config(m, i, k, torch.bfloat16, num_sms=132, norm=norm, gated=True)
        cfg.check()
        assert cfg.split_k == 1 and cfg.block_k <= k, cfg
        plain = choose_config(m, 2 * i, k, torch.bfloat16, num_sms=132, norm=norm)
        if m == 1:  # the same weight rows per program as without the epilogue, one K tile
            assert 2 * cfg.block_n == plain.block_n and not cfg.use_dot and cfg.block_k >= k, cfg
            assert -(-i // cfg.block_n) >= 132, cfg  # at least one wave
        else:
            assert cfg.use_dot and cfg.block_n >= 16, cfg
