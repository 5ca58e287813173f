"""The persistent decode layer's GEMM stages with bf16 pair tiles (``DecodeLayerConfig.pairs``:
uint32 words of two bf16 weights, widened by a shift and a mask) against the same stages on
bf16 tiles, one stage per launch under the Triton interpreter: each input mode (a row written
in the launch, the RMSNorm of the layer's input, the RMSNorm after attention), gated or not,
balanced or chunked, several K tiles, K tiles wider than K. Only float32 summation orders
differ between the two, so the outputs agree to a bf16 rounding; and both match torch.

(The whole layer's bf16 path cannot run here: the attention stage's bf16 ``tl.dot`` is wrong
under the interpreter. The GPU tests run the whole layer with pairs.)"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels import decode_layer as dl
from infer_core.kernels.act_and_mul import silu_and_mul_ref
from infer_core.kernels.decode_layer.gemm import (
    _first_tiles,
    _gemm_stage,
    _norm_pairs,
    _norm_words,
    _stream_rstd,
)
from infer_core.kernels.rms_norm import rms_norm_ref
from tests.kernels.cases import generator, randn


@triton.jit
def _one_stage(w_ptr, out_ptr, x_ptr, r_ptr, o_ptr, nw_ptr, h_ptr, eps, num_programs,
               N: tl.constexpr, K: tl.constexpr, MODE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
               GATED: tl.constexpr, ROWS: tl.constexpr, BK: tl.constexpr, PIPE: tl.constexpr,
               BALANCED: tl.constexpr, SUB: tl.constexpr, ONCE: tl.constexpr):
    KT: tl.constexpr = (K + BK - 1) // BK
    pid = tl.program_id(0)
    w, wu = _first_tiles(w_ptr, pid, num_programs, N, K, GATED, ROWS, BK, BALANCED, SUB)
    rstd = 0.0
    xn, xn_odd = rstd, rstd
    if ONCE:  # (the layer's norm_once: MODE 1 / 2, pair tiles, one K tile; the row stored by program 0)
        nw = _norm_words(nw_ptr, K, BK, SUB)
        xn, xn_odd = _norm_pairs(x_ptr, r_ptr, o_ptr, h_ptr, nw, K, eps, pid == 0, MODE, HAS_RESIDUAL, BK, SUB)
    elif MODE > 0:
        rstd = _stream_rstd(x_ptr, r_ptr, o_ptr, h_ptr, K, eps, pid == 0, MODE, HAS_RESIDUAL, BK, KT)
    _gemm_stage(w_ptr, out_ptr, N, K, pid, num_programs, w, wu, x_ptr, r_ptr, o_ptr, nw_ptr, rstd,
                MODE, HAS_RESIDUAL, GATED, ROWS, BK, KT, PIPE, BALANCED, SUB, xn, xn_odd, ONCE)


@st.composite
def stage_cases(draw):
    k = draw(st.sampled_from([16, 48, 64, 96, 128]))
    n = draw(st.sampled_from([8, 24, 40]))
    programs = draw(st.sampled_from([1, 3, 5]))
    balanced = draw(st.booleans())
    if balanced:
        rows, bk = triton.next_power_of_2(-(-n // programs)), triton.next_power_of_2(k)
    else:
        rows = draw(st.sampled_from([1, 2, 4, 8]))
        bk = draw(st.sampled_from([b for b in (8, 16, 32, 64, 128) if b <= triton.next_power_of_2(k)]))
    sub = draw(st.sampled_from([s for s in (8, 16, 32, 64) if s <= bk]))
    return dict(n=n, k=k, programs=programs, balanced=balanced, rows=rows, bk=bk, sub=sub,
                mode=draw(st.sampled_from([0, 1, 2])), residual=draw(st.booleans()), gated=draw(st.booleans()),
                pipe=1 if balanced else draw(st.sampled_from([1, 2])),
                seed=draw(st.integers(0, 2**16)))


def _truncated(v: torch.Tensor) -> torch.Tensor:
    """float32 -> bf16 as the interpreter converts (the low 16 bits dropped, no rounding)."""
    return (v.view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)


def run_stage(c: dict, sub: int, once: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stage's output (a pair-tile launch when ``sub`` > 0; its norm loaded once with
    ``once``), the torch reference and the residual row a norm stage's program 0 stored
    (checked here to equal ``x (+ r) (+ o)`` with the interpreter's bf16 truncations)."""
    gen = generator(c["seed"])
    n, k, bf16 = c["n"], c["k"], torch.bfloat16
    w = randn(gen, (2 if c["gated"] else 1) * n, k, device="cpu", dtype=bf16, scale=k**-0.5)
    x, r, o = (randn(gen, 1, k, device="cpu", dtype=bf16) for _ in range(3))
    nw = (1.0 + randn(gen, k, device="cpu", dtype=torch.float32, scale=0.2)).to(bf16)
    out = torch.full((n,), float("nan"), dtype=bf16)
    h_out = torch.full((k,), float("nan"), dtype=bf16)
    residual = c["residual"] and c["mode"] > 0
    _one_stage[(c["programs"],)](w, out, x, r if residual else x, o, nw, h_out, 1e-6, c["programs"],
                                 N=n, K=k, MODE=c["mode"], HAS_RESIDUAL=residual, GATED=c["gated"],
                                 ROWS=c["rows"], BK=c["bk"], PIPE=c["pipe"], BALANCED=c["balanced"],
                                 SUB=sub, ONCE=once, num_warps=4)
    h = x + r if residual else x
    if c["mode"] == 2:
        h = o + h
    if c["mode"] > 0:  # exactly the interpreter's sums: each add truncated to bf16
        h_trunc = _truncated(x.float() + r.float()) if residual else x
        if c["mode"] == 2:
            h_trunc = _truncated(o.float() + h_trunc.float())
        assert torch.equal(h_out, h_trunc.reshape(-1)), (once, c)
    a = x if c["mode"] == 0 else rms_norm_ref(h, nw, 1e-6)
    y = (a.float() @ w.float().T).to(bf16)
    ref = silu_and_mul_ref(y) if c["gated"] else y
    return out, ref.reshape(-1), h_out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


@settings(max_examples=30, deadline=None)
@given(c=stage_cases())
def test_pair_tiles_match_bf16_tiles_and_torch(c):
    plain, ref, _ = run_stage(c, 0)
    pairs, _, _ = run_stage(c, c["sub"])
    assert not pairs.isnan().any(), c  # every row written
    assert relative(pairs, plain) <= 2e-2, (relative(pairs, plain), c)
    # against torch: the interpreter truncates float32 -> bf16 (no rounding to nearest) at each of
    # the norm's, the product's and the gated activation's roundings
    assert relative(pairs, ref) <= 8e-2, (relative(pairs, ref), c)


@settings(max_examples=30, deadline=None)
@given(c=stage_cases().filter(lambda c: c["mode"] > 0 and c["bk"] >= c["k"]))
def test_norm_loaded_once_equals_two_passes(c):
    """norm_once (:func:`~infer_core.kernels.decode_layer.gemm._norm_pairs`): a norm stage over one
    pair K tile, its row and weight loaded once, computes what the two-pass stage computes (only
    the squares' summation order differs) and stores the same residual row."""
    twice, ref, h_twice = run_stage(c, c["sub"])
    once, _, h_once = run_stage(c, c["sub"], once=True)
    assert not once.isnan().any(), c
    assert torch.equal(h_once, h_twice), c
    assert relative(once, twice) <= 2e-2, (relative(once, twice), c)
    assert relative(once, ref) <= 8e-2, (relative(once, ref), c)


def test_pair_sub_fills_the_threads_once():
    assert dl.pair_sub(16, 1024, 1024, 4) == 64  # 8 threads of 16-byte words per row, 16 rows
    assert dl.pair_sub(4, 1024, 1024, 4) == 256
    assert dl.pair_sub(1, 128, 100, 4) == 128  # never wider than the K tile
    assert dl.pair_sub(4, 1024, 1023, 4) == 0  # odd K: bf16 tiles


@pytest.mark.parametrize(("value", "expected"), [
    (None, dl.DecodeLayerConfig.pairs), ("", dl.DecodeLayerConfig.pairs), ("0010", (False, False, True, False)),
    ("1111", (True,) * 4)])
def test_default_pairs_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.delenv("INFER_DECODE_PAIRS", raising=False)
    if value is not None:
        monkeypatch.setenv("INFER_DECODE_PAIRS", value)
    assert dl.default_pairs() == expected


@pytest.mark.parametrize("value", ["1", "00100", "0020"])
def test_default_pairs_refuses_other_values(monkeypatch, value):
    monkeypatch.setenv("INFER_DECODE_PAIRS", value)
    with pytest.raises(ValueError, match="four digits"):
        dl.default_pairs()
