"""The small-M GEMM kernel (``y = x' @ weight.T``, optionally with SiLU / GELU(tanh)-and-mul
in its prologue) against its torch reference under the Triton interpreter: hypothesis over
M 1-16, N and K off the block sizes, fp32 / fp16 / bf16, forced configs (both inner products,
split-K), strided ``x`` rows; the fused activation against the unfused ``act_and_mul``
kernel; bitwise determinism; ``choose_config`` at real shapes.

Tolerances (``tests/kernels/small_m.py``). Kernel and reference both sum float32 products,
in different orders, and round once to the output dtype:
``|got - ref| <= 4 u |ref| + 8 sqrt(K) u32 (|x'| @ |w|.T)``, ``u`` the output dtype's unit
roundoff (the interpreter truncates float32 -> bf16 instead of rounding to nearest, so up to
1 ulp, plus the reference's half ulp). Against the torch reference of the activation, ``x'``
itself may differ in the last bit (the interpreter's bf16 truncation, exp vs torch's silu),
which adds ``4 u (|x'| @ |w|.T)``; against the ``act_and_mul`` kernel (the same arithmetic)
it does not.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels import act_and_mul as act_kernels
from infer_core.kernels.small_m_gemm import (
    LaunchConfig,
    choose_config,
    small_m_gemm,
    small_m_gemm_ref,
)
from tests.kernels.small_m import assert_within, interpretable

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ACT_KERNELS = {"silu": act_kernels.silu_and_mul, "gelu_tanh": act_kernels.gelu_tanh_and_mul}
ACT_REFS = {"silu": act_kernels.silu_and_mul_ref, "gelu_tanh": act_kernels.gelu_tanh_and_mul_ref}


def make(gen: torch.Generator, m: int, n: int, k: int, dtype: torch.dtype, act: str | None,
         row_pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = 2 * k if act else k
    x = torch.randn(m, width + row_pad, generator=gen)[:, :width].to(dtype)  # row stride width + pad
    w = (torch.randn(n, k, generator=gen) / math.sqrt(max(k, 1))).to(dtype)
    return x, w


def check(x: torch.Tensor, w: torch.Tensor, act: str | None, cfg: LaunchConfig | None) -> torch.Tensor:
    m, (n, k) = x.shape[0], w.shape
    cfg = interpretable(cfg, m, n, k, x.dtype)
    got = small_m_gemm(x, w, act_and_mul=act, config=cfg)
    if act is None:
        assert_within(got, small_m_gemm_ref(x, w), x, w)
    else:
        xp = ACT_KERNELS[act](x)  # the unfused path: exactly the prologue's arithmetic
        assert_within(got, small_m_gemm_ref(xp, w), xp, w)
        # against torch's activation: the two activations differ by a few float32 ulps of the
        # gate (not of act(gate), which cancels towards 0 for negative gates), so the slack is
        # scaled by |gate * up| where that is larger than |act(gate) * up|
        k2 = x.shape[1] // 2
        mag = torch.maximum(ACT_REFS[act](x).float().abs(), (x[:, :k2].float() * x[:, k2:].float()).abs())
        assert_within(got, small_m_gemm_ref(x, w, act), mag.to(x.dtype), w, slack=4)
    return got


@st.composite
def configs(draw: st.DrawFn, dtype: torch.dtype) -> LaunchConfig | None:
    if draw(st.booleans()):
        return None  # choose_config's
    use_dot = dtype != torch.bfloat16 and draw(st.booleans())
    block_n = draw(st.sampled_from([16, 32] if use_dot else [1, 2, 4, 8, 16, 32]))
    block_k = draw(st.sampled_from([16, 32, 64, 128, 256]))
    split_k = draw(st.sampled_from([1, 1, 2, 4, 8]))
    return LaunchConfig(block_n, block_k, split_k, use_dot=use_dot)


@st.composite
def cases(draw: st.DrawFn):
    dtype = draw(st.sampled_from(DTYPES))
    m = draw(st.integers(1, 16))
    n = draw(st.one_of(st.integers(1, 40), st.integers(1, 200)))
    k = draw(st.one_of(st.integers(1, 70), st.sampled_from([64, 128, 256, 512]), st.integers(1, 512)))
    act = draw(st.sampled_from([None, None, "silu", "gelu_tanh"]))
    cfg = draw(configs(dtype))
    row_pad = draw(st.sampled_from([0, 0, 3]))
    seed = draw(st.integers(0, 2**16))
    return dtype, m, n, k, act, cfg, row_pad, seed


@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_small_m_gemm_matches_reference(case):
    dtype, m, n, k, act, cfg, row_pad, seed = case
    x, w = make(torch.Generator().manual_seed(seed), m, n, k, dtype, act, row_pad)
    check(x, w, act, cfg)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "silu", "gelu_tanh"])
@pytest.mark.parametrize("cfg", [
    LaunchConfig(8, 64),  # K = 300: four full tiles and a partial one
    LaunchConfig(4, 128, split_k=2),  # splits of two tiles and one partial
    LaunchConfig(16, 32, split_k=8),  # 10 tiles: five splits of two, none empty
    LaunchConfig(16, 64, split_k=2, use_dot=True),
    LaunchConfig(32, 512),  # one tile wider than K
], ids=str)
def test_forced_configs(dtype, act, cfg):
    x, w = make(torch.Generator().manual_seed(7), 5, 37, 300, dtype, act)
    check(x, w, act, cfg)


@pytest.mark.parametrize("dtype", DTYPES)
def test_even_k_and_m_above_16(dtype):
    gen = torch.Generator().manual_seed(3)
    for m in (16, 17, 37):  # beyond 16 rows: one program row per 16
        x, w = make(gen, m, 24, 256, dtype, None)
        check(x, w, None, LaunchConfig(8, 64, split_k=2))
        check(x, w, None, None)


@pytest.mark.parametrize("cfg", [None, LaunchConfig(4, 64, split_k=4), LaunchConfig(16, 64, split_k=2, use_dot=True)],
                         ids=str)
def test_bitwise_deterministic(cfg):
    x, w = make(torch.Generator().manual_seed(11), 9, 50, 448, torch.float16, "silu")
    first = small_m_gemm(x, w, act_and_mul="silu", config=cfg)
    for _ in range(2):
        assert torch.equal(small_m_gemm(x, w, act_and_mul="silu", config=cfg), first)


def test_fused_equals_unfused_kernel_bitwise_in_fp32():
    """With float32 everything is exact up to the summation order, which one config fixes:
    the fused prologue and ``silu_and_mul`` then a plain launch give the same bits."""
    x, w = make(torch.Generator().manual_seed(5), 4, 33, 200, torch.float32, "silu")
    cfg = LaunchConfig(8, 64, split_k=2)
    fused = small_m_gemm(x, w, act_and_mul="silu", config=cfg)
    assert torch.equal(fused, small_m_gemm(act_kernels.silu_and_mul(x), w, config=cfg))


def test_edges_and_errors():
    w = torch.randn(8, 16)
    assert small_m_gemm(torch.randn(0, 16), w).shape == (0, 8)
    assert torch.equal(small_m_gemm(torch.randn(3, 0), torch.randn(8, 0)), torch.zeros(3, 8))
    check(torch.randn(16, 2).t(), torch.randn(5, 16), None, None)  # x with stride(-1) != 1
    with pytest.raises(ValueError, match="act_and_mul must be one of"):
        small_m_gemm(torch.randn(2, 32), w, act_and_mul="relu")
    with pytest.raises(AssertionError):
        small_m_gemm(torch.randn(2, 16), w, act_and_mul="silu")  # needs [M, 2K]
    with pytest.raises(AssertionError):
        small_m_gemm(torch.randn(2, 16), w.half())
    with pytest.raises(AssertionError):
        small_m_gemm(torch.randn(2, 8), w.t())  # weight not row-major


# Llama-3.2-1B and Qwen3-0.6B projections: (N, K)
REAL = {"llama qkv": (3072, 2048), "llama o": (2048, 2048), "llama gate_up": (16384, 2048),
        "llama down": (2048, 8192), "qwen qkv": (4096, 1024), "qwen o": (1024, 2048),
        "qwen gate_up": (6144, 1024), "qwen down": (1024, 3072)}


@pytest.mark.parametrize("m", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_choose_config_at_real_shapes(m, dtype):
    for n, k in REAL.values():
        cfg = choose_config(m, n, k, dtype, num_sms=132)
        cfg.check()
        bm = cfg.block_m(m)
        assert bm >= m
        programs = triton_cdiv(n, cfg.block_n) * triton_cdiv(m, bm) * cfg.split_k
        assert cfg.block_k <= k
        if m == 1:
            assert programs >= 132, (m, n, k, cfg)  # at least one wave
            assert cfg.split_k == 1 and not cfg.use_dot, (n, k, cfg)  # batch 1 needs no second launch
        elif dtype != torch.float32:
            assert cfg.use_dot, (m, n, k, cfg)  # the MMA from two rows (the sweep's fastest)
            if k >= 32 * cfg.block_k:
                assert programs >= 132, (m, n, k, cfg)  # long K is split to fill the SMs


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
