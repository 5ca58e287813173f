"""qk early (``DecodeLayerConfig.qk_parts``), the qkv stage alone under the Triton interpreter,
in bf16 with pair tiles and bf16 tiles: each q / k program holds whole rotary pairs of one
head, applies its QK-norm weight and RoPE and sums its squares; the other programs store v.
Against torch, with QK-norm (Qwen 3) and without (Llama), several parts per head, uneven v
shares. (The whole bf16 layer cannot run here: attention's bf16 ``tl.dot`` is wrong under the
interpreter; the GPU tests run it.)"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.kernels import decode_layer as dl
from infer_core.kernels.rms_norm import rms_norm_ref
from tests.kernels.cases import generator, randn, rope_tables


@triton.jit
def _qkv_only(w_qkv_ptr, x_ptr, nw_ptr, pos_ptr, cos_ptr, sin_ptr, stride_cos, stride_sin, qn_ptr, kn_ptr,
              qkv_ptr, qk_rot_ptr, qk_sq_ptr, eps, num_programs, HIDDEN: tl.constexpr, HQ: tl.constexpr,
              HKV: tl.constexpr, HEAD_DIM: tl.constexpr, QK_PARTS: tl.constexpr, ROWS: tl.constexpr,
              BK: tl.constexpr, SUB: tl.constexpr, QK_NORM: tl.constexpr):
    pid = tl.program_id(0)
    rows, ok = dl._qk_rows(pid, num_programs, HQ, HKV, HEAD_DIM, QK_PARTS, ROWS)
    w = dl._w_gather(w_qkv_ptr, rows, ok, 0, HIDDEN, BK, SUB)
    cos, sin, w1, w2 = dl._qk_prologue(pid, pos_ptr, cos_ptr, sin_ptr, stride_cos, stride_sin, qn_ptr, kn_ptr,
                                       HQ, HKV, HEAD_DIM, QK_PARTS, ROWS, QK_NORM)
    rstd = dl._stream_rstd(x_ptr, x_ptr, x_ptr, x_ptr, HIDDEN, eps, False, 1, False, BK, 1)
    dl._qkv_early_stage(w, pid, num_programs, x_ptr, x_ptr, x_ptr, nw_ptr, rstd, qkv_ptr, qk_rot_ptr, qk_sq_ptr,
                        cos, sin, w1, w2, HIDDEN, HQ, HKV, HEAD_DIM, QK_PARTS, ROWS, BK, SUB, False, tl.bfloat16)


def run(hidden, hq, hkv, d, programs, qk_norm, pos, seed, pairs):
    gen = generator(seed)
    bf16 = torch.bfloat16
    parts, rows, bk = dl.qk_early_shape(hidden, hq, hkv, d, programs)
    w = randn(gen, (hq + 2 * hkv) * d, hidden, device="cpu", dtype=bf16, scale=hidden**-0.5)
    x = randn(gen, 1, hidden, device="cpu", dtype=bf16)
    nw = (1.0 + randn(gen, hidden, device="cpu", dtype=torch.float32, scale=0.2)).to(bf16)
    qn = (1.0 + randn(gen, d, device="cpu", dtype=torch.float32, scale=0.2)).to(bf16)
    kn = (1.0 + randn(gen, d, device="cpu", dtype=torch.float32, scale=0.2)).to(bf16)
    cos, sin = rope_tables(d, pos + 4, 10000.0, "cpu")
    qkv = torch.full(((hq + 2 * hkv) * d,), float("nan"), dtype=bf16)
    rot = torch.full(((hq + hkv) * d,), float("nan"))
    squares = torch.full(((hq + hkv) * parts,), float("nan"))
    sub = dl.pair_sub(rows, bk, hidden, 4) if pairs else 0
    _qkv_only[(programs,)](w, x, nw, torch.tensor([pos]), cos, sin, cos.stride(0), sin.stride(0), qn, kn, qkv, rot,
                           squares, 1e-6, programs, HIDDEN=hidden, HQ=hq, HKV=hkv, HEAD_DIM=d, QK_PARTS=parts,
                           ROWS=rows, BK=bk, SUB=sub, QK_NORM=qk_norm, num_warps=4)
    return parts, qkv, rot, squares, (w, x, nw, qn, kn, cos[pos], sin[pos])


@settings(max_examples=6, deadline=None)
@given(shape=st.sampled_from([(64, 2, 1, 32), (96, 4, 2, 32), (128, 2, 2, 64), (64, 8, 2, 16)]),
       extra=st.integers(1, 24), qk_norm=st.booleans(), pos=st.integers(0, 50), seed=st.integers(0, 2**16))
def test_qkv_stage_matches_torch(shape, extra, qk_norm, pos, seed):
    hidden, hq, hkv, d = shape
    programs = hq + hkv + extra
    half = d // 2
    outs = [run(hidden, hq, hkv, d, programs, qk_norm, pos, seed, pairs) for pairs in (True, False)]
    parts, qkv, rot, squares, (w, x, nw, qn, kn, cos, sin) = outs[0]
    ref = (rms_norm_ref(x, nw, 1e-6).float() @ w.float().T).to(torch.bfloat16).float().reshape(-1)
    qk = ref[: (hq + hkv) * d].reshape(hq + hkv, d)
    v = ref[(hq + hkv) * d:]
    assert (qkv[(hq + hkv) * d:].float() - v).abs().max() <= 5e-2 * v.abs().max()  # every v row written
    weight = torch.stack([qn.float()] * hq + [kn.float()] * hkv) if qk_norm else torch.ones(hq + hkv, d)
    b = qk * weight
    expected = torch.cat([b[:, :half] * cos - b[:, half:] * sin, b[:, half:] * cos + b[:, :half] * sin], dim=1)
    scale = expected.abs().max()
    # (the interpreter truncates float32 -> bf16 at the norm's and the product's roundings)
    assert not rot.isnan().any() and ((rot.reshape(hq + hkv, d) - expected).abs().max() / scale).item() <= 5e-2
    pp = half // parts
    sums = torch.stack([(qk[:, p * pp:(p + 1) * pp] ** 2).sum(1) + (qk[:, half + p * pp: half + (p + 1) * pp] ** 2).sum(1)
                        for p in range(parts)], dim=1).reshape(-1)
    assert not squares.isnan().any() and ((squares - sums).abs().max() / sums.max()).item() <= 5e-2
    assert qkv[: (hq + hkv) * d].isnan().all()  # (q and k go to rot and squares only)
    # pair tiles and bf16 tiles: only float32 summation orders differ
    for a, b2 in [(qkv[(hq + hkv) * d:], outs[1][1][(hq + hkv) * d:]), (rot, outs[1][2]), (squares, outs[1][3])]:
        assert ((a.float() - b2.float()).abs().max() / b2.float().abs().max()).item() <= 2e-2
