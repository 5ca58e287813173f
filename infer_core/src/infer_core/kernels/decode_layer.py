"""A whole decoder layer of a batch-1 decode step in one persistent launch (Llama / Qwen 3).

At batch 1 the step is a chain of short kernels: per layer (with the RMSNorm prologues) the
QKV GEMM, QK-norm + RoPE + KV write, attention, the split-KV reduction, o_proj, gate/up,
the activation and down_proj. Each GEMM streams 4-12 MB (Qwen3-0.6B) and pays a ramp over
the SMs, a first DRAM round trip and a tail; the chain measured 17.1 µs per layer for the
four GEMMs against 7.1 µs at the copy ceiling (benchmarks/reports/decode-chain-2026-12-02-h200).

Here one program per SM runs every stage of the layer, with a grid-wide barrier between
dependent stages instead of a launch:

1. ``qkv = rms_norm(x + residual) @ w_qkv.T`` (the norm recomputed by every program from
   the input row, as the GEMM prologue does; with ``norm_once`` the row is loaded once and the
   norm weight requested with the stage's first tiles);
2. per (KV head, key split): QK-norm and RoPE of the head's query group (every split) and,
   in the split that holds the step's own position, of its key, which it stores with the
   value into the paged cache for later steps; then attention over the split's keys (online
   softmax, partials): the tiles hold earlier steps' keys (the first one requested at the
   launch's start, ``kv_early``), the step's own key comes from registers, last;
3. per query head: the split-KV merge;
4. ``o = attn @ w_o.T``;
5. ``h = o + (x + residual)`` (the new residual, stored once), ``act(rms_norm(h) @ gate.T) *
   (rms_norm(h) @ up.T)``;
6. ``out = act @ w_down.T``.

The GEMM stages split their weight rows into chunks of ``rows`` rows, program ``p`` taking
chunks ``p, p + P, ...`` and walking each in ``bk``-wide K tiles; or (a balanced stage) each
program takes one contiguous share of the rows in one tile. Each stage's first tile is
requested before the barrier that precedes the stage (weights never depend on the step). The
later tiles: the next one is requested into registers before the current one's product
(``pipeline = 1``, the default; ptxas still schedules those loads after the product, so every
loop step pays a DRAM round trip: the defaults take few, large steps and several programs per
SM) or through Triton's software pipeline (``pipeline > 1``, cp.async into shared memory;
measured no faster on an H200).

The barrier: every thread's stores, ``debug_barrier``, one release-``atomic_add`` per program
on the stage's counter (the arrival; with ``arrive_first`` the next stage's first loads are
requested after it), then acquire-polls (each after a ``poll_sleep`` nanosleep, 100 ns by
default: measured 0.7 µs per layer faster than polling flat out) until all ``P`` programs
arrived. The counters are never reset: launch ``e`` (the count in ``counters[EPOCH_SLOT]``,
read after the PDL wait, when the launch before has finished) waits at every barrier for the
counter to reach ``(e + 1) P`` (int32 differences, so wrapping around is harmless), and
program 0 adds 1 to the epoch when it passed its last barrier (every program had read it
before arriving at barrier 0). An exit counter that reset them instead (its arrival: a
GPU-scope fence and an atomic round trip in the last program out) delayed the launch's end:
20.8 against 21.2 µs per Qwen3-0.6B layer, so it was removed.

Every program must be resident at once: the launch compiles first and refuses more programs than fit (registers, shared memory, threads;
:func:`resident_programs`), and with no config takes the most programs per SM (4, 2, 1) that
fit. The polls are bounded (``MAX_SPINS``) as a last guard: a barrier that never opens raises
an error flag instead of hanging. Data a stage reads that another program wrote in this
launch is loaded with ``.cg`` (L2, never a stale L1 line).

``timeline`` (benchmarks): every program stamps its SM clock at each stage boundary and inside
the attention and merge stages (:func:`_stamp`; ``benchmarks/decode_layer_timeline.py``).

Numerics are those of the unfused path (each intermediate rounded to the dtype where the
separate kernels store it): the same helpers as :mod:`~infer_core.kernels.rms_norm`,
:mod:`~infer_core.kernels.qk_norm_rope`, :mod:`~infer_core.kernels.paged_attention` (its tile
size and split rule, tensor-core products over ``BLOCK_M = 16`` padded query rows),
:mod:`~infer_core.kernels.attention_reduce` and :mod:`~infer_core.kernels.act_and_mul`; only
float32 summation orders differ. ``decode_layer_ref`` is the torch reference.

Under the Triton interpreter (programs run one after another, so a spin barrier would never
open) and for tests, ``stage_by_stage=True`` runs the same kernel once per stage (``STAGE``).

Scope (:func:`supports`): one token, no sliding window, no logit softcap, bf16 / fp16 / fp32
KV cache of the activations' dtype (no FP8), no biases, SiLU, Llama / Qwen RMSNorm numerics,
head dims whose half is a power of two.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from infer_core.attention.backend import AttentionLayer
from infer_core.attention.metadata import AttentionMetadata
from infer_core.kernels.act_and_mul import gated, silu_and_mul_ref
from infer_core.kernels.attention_reduce import merge_splits
from infer_core.kernels.device import num_sms
from infer_core.kernels.kv_cache_write import write_kv_ref
from infer_core.kernels.paged_attention import LOG2E, online_softmax_step, paged_attention_ref
from infer_core.kernels.pdl import use_pdl, wait_for_prior
from infer_core.kernels.qk_norm_rope import norm_rope
from infer_core.kernels.rms_norm import add_residual, inv_rms, normed, rms_norm_ref
from infer_core.kernels.rotary import rotary_embedding_ref

EPOCH_SLOT = tl.constexpr(6)  # the launches' count (counters[6]): the barrier counters (0-4) are never reset
TIMELINE_SLOTS = tl.constexpr(32)  # clock stamps per program in a timeline (_stamp)
MAX_SPINS = tl.constexpr(1 << 22)  # polls of one barrier before giving up (seconds: a bug, never a wait)


# ----------------------------------------------------------------------------- barrier


@triton.jit
def _grid_barrier(counters_ptr, index, target, error_ptr, POLL_SLEEP: tl.constexpr):
    """Wait until all programs reached barrier ``index`` (its counter reached ``target``,
    :func:`_target`); their stores before it are visible after it (release add, acquire polls,
    CTA barriers around both)."""
    seen = _arrive(counters_ptr, index)
    _wait(counters_ptr, index, seen, target, error_ptr, POLL_SLEEP)


@triton.jit
def _target(counters_ptr, num_programs):
    """``(target, epoch)``: the count every barrier counter reaches when all programs of this
    launch arrived. The counters are never reset: launch ``e`` (the epoch in
    ``counters[EPOCH_SLOT]``, read after the PDL wait, when the launch before finished) waits
    for ``(e + 1) * num_programs``, in int32 arithmetic that wraps (the comparisons take the
    difference)."""
    epoch = tl.load(counters_ptr + EPOCH_SLOT, cache_modifier=".cg")
    return (epoch + 1) * num_programs, epoch


@triton.jit
def _arrive(counters_ptr, index):
    """This program's arrival at barrier ``index`` (its stores before it released): the count
    of programs arrived so far. The release is a GPU-scope fence, which also waits for the
    program's loads in flight: a load issued between :func:`_arrive` and :func:`_wait`
    overlaps the wait instead of delaying the arrival."""
    tl.debug_barrier()
    return tl.atomic_add(counters_ptr + index, 1, sem="acq_rel", scope="gpu") + 1


@triton.jit
def _wait(counters_ptr, index, seen, target, error_ptr, POLL_SLEEP: tl.constexpr):
    """Poll barrier ``index`` (acquire atomics) until its counter reached ``target`` (all
    programs arrived; ``seen - target`` is compared, so a counter that wrapped around compares
    right). With ``POLL_SLEEP`` > 0 (CUDA only), each poll comes after a ``nanosleep`` of that
    many nanoseconds: fewer atomics on the counter's L2 slice while the last programs arrive.
    (Acquire loads instead of the atomics measured slower: 20.3 against 19.6 µs per layer,
    benchmarks/reports/multi-layer-launch-2026-12-04-h200.)"""
    counter = counters_ptr + index
    spins = 0
    while (seen - target < 0) & (spins < MAX_SPINS):
        if POLL_SLEEP > 0:
            tl.inline_asm_elementwise("nanosleep.u32 $1;\nmov.b32 $0, 0;", "=r,r", [spins * 0 + POLL_SLEEP],
                                      dtype=tl.int32, is_pure=False, pack=1)
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        spins += 1
    if seen - target < 0:
        tl.atomic_xchg(error_ptr, 1, sem="relaxed", scope="gpu")
    tl.debug_barrier()


# group_sync: counters[8 + g] count KV group g's qkv producers, counters[8 + HKV + g] its attention items done
GROUP_SLOT = tl.constexpr(8)


@triton.jit
def _interval_programs(a, b, num_programs, N: tl.constexpr):
    """How many programs of a balanced stage (:func:`_share`, at most ``N`` programs) hold rows
    of ``[a, b)``: the owners of its first and last rows (row ``r``'s is ``((r + 1) P - 1) // N``)
    and every one between."""
    return ((b * num_programs - 1) // N) - (((a + 1) * num_programs - 1) // N) + 1


@triton.jit
def _touches(lo, hi, a, b):
    return (lo < b) & (a < hi)


@triton.jit
def _group_rows(g, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr):
    """KV group ``g``'s rows of the qkv output: its query heads', its key's and its value's
    (three ``[start, end)`` intervals)."""
    q0 = g * (HQ // HKV) * D
    k0 = HQ * D + g * D
    v0 = (HQ + HKV) * D + g * D
    return q0, q0 + (HQ // HKV) * D, k0, k0 + D, v0, v0 + D


@triton.jit
def _group_arrive(counters_ptr, pid, num_programs, N: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr,
                  D: tl.constexpr):
    """group_sync's arrival after the qkv stage (a balanced share, :func:`_share`): one release
    add on KV group ``g``'s counter per interval of the group's rows (:func:`_group_rows`) that
    this program's share holds rows of (the CTA barrier first: every thread's stores before it)."""
    lo, hi = _share(pid, num_programs, N)
    tl.debug_barrier()
    for g in tl.static_range(HKV):
        q0, q1, k0, k1, v0, v1 = _group_rows(g, HQ, HKV, D)
        n = _touches(lo, hi, q0, q1).to(tl.int32) + _touches(lo, hi, k0, k1).to(tl.int32) \
            + _touches(lo, hi, v0, v1).to(tl.int32)
        if n > 0:
            tl.atomic_add(counters_ptr + GROUP_SLOT + g, n, sem="release", scope="gpu")


@triton.jit
def _group_target(g, epoch, num_programs, N: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr):
    """The count KV group ``g``'s counter reaches once every producer of its rows arrived in
    launch ``epoch`` (the counters are never reset: ``epoch + 1`` launches' worth)."""
    q0, q1, k0, k1, v0, v1 = _group_rows(g, HQ, HKV, D)
    per_launch = (_interval_programs(q0, q1, num_programs, N) + _interval_programs(k0, k1, num_programs, N)
                  + _interval_programs(v0, v1, num_programs, N))
    return (epoch + 1) * per_launch


@triton.jit
def _stamp_after(timeline_ptr, pid, index, value, TIMELINE: tl.constexpr):
    """:func:`_stamp` once the scalar ``value`` is computed (the clock read depends on it: the
    stamp marks when loaded data was used, not when its load was issued)."""
    if TIMELINE:
        dep = (value != value).to(tl.int32)  # 0, but not known to be before ``value`` exists
        clock = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [dep], dtype=tl.int64,
                                          is_pure=False, pack=1)
        tl.store(timeline_ptr + pid * TIMELINE_SLOTS + index, clock)


@triton.jit
def _stamp(timeline_ptr, pid, index, TIMELINE: tl.constexpr):
    """With ``TIMELINE``, program ``pid``'s SM clock (``%clock64``) at point ``index`` (and the
    global nanosecond timer at points 0 and 13, in slots 14 and 15; points 16-23 lie inside the
    attention and merge stages) into ``timeline_ptr [P, TIMELINE_SLOTS]`` (benchmarks only: where
    the layer's time goes)."""
    if TIMELINE:
        clock = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [pid], dtype=tl.int64,
                                          is_pure=False, pack=1)
        tl.store(timeline_ptr + pid * TIMELINE_SLOTS + index, clock)
        if index == 0 or index == 13:
            now = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [pid], dtype=tl.int64,
                                            is_pure=False, pack=1)
            tl.store(timeline_ptr + pid * TIMELINE_SLOTS + 14 + index // 13, now)


# ----------------------------------------------------------------------------- GEMM stages


@triton.jit
def _w_rows(w_ptr, row0, row_end, kt, K: tl.constexpr, ROWS: tl.constexpr, BK: tl.constexpr, SUB: tl.constexpr):
    """Rows ``[row0, row0 + ROWS)`` below ``row_end``, columns ``[kt * BK, +BK)`` of a
    row-major weight with ``K`` columns (zeros outside), streamed once. The mask is constant
    along K when ``BK`` divides ``K`` (vectorized loads). With ``SUB`` > 0 (bf16 weights,
    :func:`_pair_dot`), the tile is ``[ROWS, BK / SUB, SUB / 2]`` uint32 words, each holding
    two neighbouring bf16 weights."""
    rows = row0 + tl.arange(0, ROWS)
    if SUB > 0:
        HALF_SUB: tl.constexpr = SUB // 2
        pairs = kt * (BK // 2) + tl.arange(0, BK // SUB)[:, None] * HALF_SUB + tl.arange(0, HALF_SUB)[None, :]
        ptrs = w_ptr.to(tl.pointer_type(tl.uint32)) + rows.to(tl.int64)[:, None, None] * (K // 2) + pairs[None, :, :]
        if K % BK == 0:
            mask = (rows < row_end)[:, None, None]
        else:
            mask = (rows < row_end)[:, None, None] & (pairs < K // 2)[None, :, :]
        return tl.load(ptrs, mask=mask, other=0, eviction_policy="evict_first")
    else:
        ks = kt * BK + tl.arange(0, BK)
        if K % BK == 0:
            mask = (rows < row_end)[:, None]
        else:
            mask = (rows < row_end)[:, None] & (ks < K)[None, :]
        return tl.load(w_ptr + rows.to(tl.int64)[:, None] * K + ks[None, :], mask=mask, other=0.0,
                       eviction_policy="evict_first")


@triton.jit
def _pair_dot(w, x_even, x_odd):
    """The row sums of a word tile ``w [R, BK / SUB, SUB / 2]`` (two bf16 weights per uint32)
    times the input's even and odd elements: each bf16 widened to float32 by one integer
    instruction (the low weight shifted up, the high one masked: exactly the bf16 value), the
    products accumulated by FMA chains along the middle axis (each thread's own registers),
    then across the threads. Half the instructions of the bf16 tile's
    ``sum(w.to(float32) * x)`` (measured offline in the sm_90 SASS)."""
    lo, hi = _widen_pairs(w)
    return tl.sum(tl.sum(lo * x_even[None, :, :], axis=1) + tl.sum(hi * x_odd[None, :, :], axis=1), axis=1)


@triton.jit
def _w_tile(w_ptr, chunk, kt, N: tl.constexpr, K: tl.constexpr, valid, ROWS: tl.constexpr, BK: tl.constexpr,
            SUB: tl.constexpr):
    """Row chunk ``chunk`` (rows ``[chunk * ROWS, +ROWS)`` of the ``[N, K]`` weight), K tile
    ``kt`` (:func:`_w_rows`; zeros everywhere when not ``valid``)."""
    return _w_rows(w_ptr, chunk * ROWS, tl.where(valid, N, 0), kt, K, ROWS, BK, SUB)


@triton.jit
def _share(pid, num_programs, N: tl.constexpr):
    """Program ``pid``'s rows ``[lo, hi)`` of a balanced stage: ``N`` rows cut into
    ``num_programs`` contiguous shares that differ by at most one row."""
    return (pid * N) // num_programs, ((pid + 1) * N) // num_programs


@triton.jit
def _first_tiles(w_ptr, pid, num_programs, N: tl.constexpr, K: tl.constexpr, GATED: tl.constexpr, ROWS: tl.constexpr,
                 BK: tl.constexpr, BALANCED: tl.constexpr, SUB: tl.constexpr):
    """The first weight tile(s) of program ``pid``'s share of a GEMM stage (the up rows' too
    when ``GATED``), issued ahead of the barrier before the stage: its first row chunk, or
    (``BALANCED``) its whole share."""
    if BALANCED:
        lo, hi = _share(pid, num_programs, N)
        w = _w_rows(w_ptr, lo, hi, 0, K, ROWS, BK, SUB)
        if GATED:  # noqa: SIM108 (a constexpr branch)
            wu = _w_rows(w_ptr + N * K, lo, hi, 0, K, ROWS, BK, SUB)
        else:
            wu = w
    else:
        valid = pid < tl.cdiv(N, ROWS)
        w = _w_tile(w_ptr, pid, 0, N, K, valid, ROWS, BK, SUB)
        if GATED:  # noqa: SIM108 (a constexpr branch)
            wu = _w_tile(w_ptr + N * K, pid, 0, N, K, valid, ROWS, BK, SUB)
        else:
            wu = w
    return w, wu


@triton.jit
def _k_mask(ks, K: tl.constexpr, BK: tl.constexpr):
    """``ks < K``, a constant (vectorizable) mask when ``BK`` divides ``K``."""
    if K % BK == 0:
        return tl.full([BK], 1, tl.int1)
    return ks < K


@triton.jit
def _stream(x_ptr, r_ptr, o_ptr, ks, mask, MODE: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """One tile of the residual stream: ``h1 = x (+ residual)`` (``MODE`` 1, the layer's input),
    or ``h2 = o + h1`` (``MODE`` 2, after attention; ``o`` written in this launch)."""
    h = tl.load(x_ptr + ks, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        h = add_residual(h, tl.load(r_ptr + ks, mask=mask, other=0.0))
    if MODE == 2:
        h = add_residual(tl.load(o_ptr + ks, mask=mask, other=0.0, cache_modifier=".cg"), h)
    return h


@triton.jit
def _widen_pairs(words):
    """uint32 words of two bf16 values each → the low and high values as float32 (exact: a
    shift and a mask)."""
    return (words << 16).to(tl.float32, bitcast=True), (words & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def _load_pairs(ptr, pairs, mask, CG: tl.constexpr):
    """The bf16 values at words ``pairs`` of ``ptr`` (two values per word) as float32, even and
    odd; ``.cg`` (L2) when ``CG`` (written in this launch)."""
    words_ptr = ptr.to(tl.pointer_type(tl.uint32)) + pairs
    if CG:
        words = tl.load(words_ptr, mask=mask, other=0, cache_modifier=".cg")
    else:
        words = tl.load(words_ptr, mask=mask, other=0)
    return _widen_pairs(words)


@triton.jit
def _normed_half(x, r, o, nw, rstd, dtype: tl.constexpr, MODE: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """:func:`_stream` and the RMSNorm of :func:`_gemm_input` on values already loaded (float32
    holding values of ``dtype``), with the same roundings; float32 out."""
    h = x.to(dtype)
    if HAS_RESIDUAL:
        h = add_residual(h, r.to(dtype))
    if MODE == 2:
        h = add_residual(o.to(dtype), h)
    return normed(h, rstd, nw.to(dtype), False).to(tl.float32)


@triton.jit
def _stream_rstd(x_ptr, r_ptr, o_ptr, h_out_ptr, K: tl.constexpr, eps, store, MODE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                 BK: tl.constexpr, KT: tl.constexpr):
    """``1 / rms`` of the residual stream row (float32 sum of squares over its K tiles); with
    ``store``, the row is also written to ``h_out_ptr`` (the new residual, one program)."""
    squares = tl.zeros([BK], dtype=tl.float32)
    for kt in tl.static_range(KT):
        ks = kt * BK + tl.arange(0, BK)
        mask = _k_mask(ks, K, BK)
        h = _stream(x_ptr, r_ptr, o_ptr, ks, mask, MODE, HAS_RESIDUAL)
        if store:
            tl.store(h_out_ptr + ks, h, mask=mask)
        hf = h.to(tl.float32)
        squares += hf * hf
    return inv_rms(tl.sum(squares, axis=0), K, eps)


@triton.jit
def _gemm_input(kt, K: tl.constexpr, x_ptr, r_ptr, o_ptr, nw_ptr, rstd, MODE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                BK: tl.constexpr):
    """K tile ``kt`` of a GEMM stage's input row: a vector written in this launch (``MODE`` 0)
    or the RMSNorm of the residual stream (``MODE`` 1 / 2, with its ``rstd``)."""
    ks = kt * BK + tl.arange(0, BK)
    mask = _k_mask(ks, K, BK)
    if MODE == 0:
        return tl.load(x_ptr + ks, mask=mask, other=0.0, cache_modifier=".cg")
    h = _stream(x_ptr, r_ptr, o_ptr, ks, mask, MODE, HAS_RESIDUAL)
    return normed(h, rstd, tl.load(nw_ptr + ks, mask=mask, other=0.0), False)


@triton.jit
def _pairs(kt, K: tl.constexpr, BK: tl.constexpr, SUB: tl.constexpr):
    """The uint32 word indices (two elements each) of K tile ``kt`` of a GEMM input in the pair
    layout ``[BK / SUB, SUB / 2]`` (:func:`_gemm_x`), and which lie within K."""
    HALF_SUB: tl.constexpr = SUB // 2
    pairs = kt * (BK // 2) + tl.arange(0, BK // SUB)[:, None] * HALF_SUB + tl.arange(0, HALF_SUB)[None, :]
    if K % BK == 0:  # noqa: SIM108 (a constexpr branch)
        mask = pairs >= 0
    else:
        mask = pairs < K // 2
    return pairs, mask


@triton.jit
def _norm_words(nw_ptr, K: tl.constexpr, BK: tl.constexpr, SUB: tl.constexpr):
    """A norm stage's RMSNorm weight as uint32 words of the pair layout (:func:`_norm_pairs`),
    requested ahead with the stage's first weight tiles (a weight: it never depends on the step)."""
    pairs, mask = _pairs(0, K, BK, SUB)
    return tl.load(nw_ptr.to(tl.pointer_type(tl.uint32)) + pairs, mask=mask, other=0)


@triton.jit
def _norm_pairs(x_ptr, r_ptr, o_ptr, h_out_ptr, nw_words, K: tl.constexpr, eps, store, MODE: tl.constexpr,
                HAS_RESIDUAL: tl.constexpr, BK: tl.constexpr, SUB: tl.constexpr):
    """:func:`_stream_rstd` then :func:`_gemm_x` of a norm stage (``MODE`` 1 / 2) whose input is
    one K tile in the pair layout (``SUB`` > 0, ``BK`` >= K), with one round of loads: the
    residual stream row ``h`` (rounded as :func:`_stream` rounds it) stays in registers for its
    sum of squares and for the product's input, and the weight came early
    (:func:`_norm_words`); the two-pass path reloads the row and the weight after the
    reduction's barrier, a second L2 round trip. Same roundings; the squares are summed in
    another order. With ``store`` the row also goes to ``h_out_ptr``. Even and odd elements out."""
    pairs, mask = _pairs(0, K, BK, SUB)
    dtype = x_ptr.dtype.element_ty
    x_lo, x_hi = _load_pairs(x_ptr, pairs, mask, False)
    h_lo = x_lo.to(dtype)
    h_hi = x_hi.to(dtype)
    if HAS_RESIDUAL:
        r_lo, r_hi = _load_pairs(r_ptr, pairs, mask, False)
        h_lo = add_residual(h_lo, r_lo.to(dtype))
        h_hi = add_residual(h_hi, r_hi.to(dtype))
    if MODE == 2:
        o_lo, o_hi = _load_pairs(o_ptr, pairs, mask, True)
        h_lo = add_residual(o_lo.to(dtype), h_lo)
        h_hi = add_residual(o_hi.to(dtype), h_hi)
    if store:
        words = (h_lo.to(tl.uint16, bitcast=True).to(tl.uint32)
                 | (h_hi.to(tl.uint16, bitcast=True).to(tl.uint32) << 16))
        tl.store(h_out_ptr.to(tl.pointer_type(tl.uint32)) + pairs, words, mask=mask)
    lo = h_lo.to(tl.float32)
    hi = h_hi.to(tl.float32)
    rstd = inv_rms(tl.sum(tl.sum(lo * lo + hi * hi, axis=1), axis=0), K, eps)
    w_lo, w_hi = _widen_pairs(nw_words)
    return (normed(h_lo, rstd, w_lo.to(dtype), False).to(tl.float32),
            normed(h_hi, rstd, w_hi.to(dtype), False).to(tl.float32))


@triton.jit
def _norm_stage_input(x_ptr, r_ptr, o_ptr, h_out_ptr, nw_words, K: tl.constexpr, eps, store, MODE: tl.constexpr,
                      HAS_RESIDUAL: tl.constexpr, BK: tl.constexpr, KT: tl.constexpr, SUB: tl.constexpr,
                      ONCE: tl.constexpr):
    """A norm stage's input (``MODE`` 1 / 2) for :func:`_gemm_stage`: ``(rstd, x, x_odd, ready)``.
    ``ONCE``: loaded once (:func:`_norm_pairs`; ``x`` / ``x_odd`` the normed input, ``rstd``
    unused); else the two-pass path's ``rstd`` (:func:`_stream_rstd`; the stage loads its input
    after it). ``ready`` depends on what was computed (the timeline's stamp)."""
    if ONCE:
        x, x_odd = _norm_pairs(x_ptr, r_ptr, o_ptr, h_out_ptr, nw_words, K, eps, store, MODE, HAS_RESIDUAL, BK, SUB)
        rstd = 0.0
        ready = tl.max(tl.max(x, 1), 0)
    else:
        rstd = _stream_rstd(x_ptr, r_ptr, o_ptr, h_out_ptr, K, eps, store, MODE, HAS_RESIDUAL, BK, KT)
        x, x_odd, ready = rstd, rstd, rstd
    return rstd, x, x_odd, ready


@triton.jit
def _gemm_x(kt, K: tl.constexpr, x_ptr, r_ptr, o_ptr, nw_ptr, rstd, MODE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
            BK: tl.constexpr, SUB: tl.constexpr):
    """:func:`_gemm_input` in float32, as ``(x, x)``; or with ``SUB`` > 0 its even and odd
    elements, each ``[BK / SUB, SUB / 2]`` (the columns of :func:`_w_rows`' word tile), loaded
    and computed in that shape (a flat row split into even and odd elements measured slower:
    Triton reshuffles it through 16-bit shared-memory reads)."""
    if SUB > 0:
        pairs, mask = _pairs(kt, K, BK, SUB)
        if MODE == 0:
            return _load_pairs(x_ptr, pairs, mask, True)
        else:
            dtype = x_ptr.dtype.element_ty
            x_lo, x_hi = _load_pairs(x_ptr, pairs, mask, False)
            r_lo, r_hi = x_lo, x_hi
            if HAS_RESIDUAL:
                r_lo, r_hi = _load_pairs(r_ptr, pairs, mask, False)
            o_lo, o_hi = x_lo, x_hi
            if MODE == 2:
                o_lo, o_hi = _load_pairs(o_ptr, pairs, mask, True)
            w_lo, w_hi = _load_pairs(nw_ptr, pairs, mask, False)
            return (_normed_half(x_lo, r_lo, o_lo, w_lo, rstd, dtype, MODE, HAS_RESIDUAL),
                    _normed_half(x_hi, r_hi, o_hi, w_hi, rstd, dtype, MODE, HAS_RESIDUAL))
    else:
        x = _gemm_input(kt, K, x_ptr, r_ptr, o_ptr, nw_ptr, rstd, MODE, HAS_RESIDUAL, BK).to(tl.float32)
        return x, x


@triton.jit
def _accumulate(acc, acc_up, w, wu, x, x_odd, j, row0, row_end, out_ptr, GATED: tl.constexpr,
                ROWS: tl.constexpr, KT: tl.constexpr, SUB: tl.constexpr):
    """Add one tile's products to the sums of rows ``[row0, +ROWS)`` (``x`` the input tile, or
    with ``SUB`` > 0 its even elements and ``x_odd`` its odd ones: :func:`_pair_dot`); after
    the last K tile, store those below ``row_end`` (the gated activation of the two sums when
    ``GATED``) and start over."""
    if SUB > 0:
        acc += _pair_dot(w, x, x_odd)
        if GATED:
            acc_up += _pair_dot(wu, x, x_odd)
    else:
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        if GATED:
            acc_up += tl.sum(wu.to(tl.float32) * x[None, :], axis=1)
    if j % KT == KT - 1:
        rows = row0 + tl.arange(0, ROWS)
        dtype = out_ptr.dtype.element_ty
        if GATED:  # noqa: SIM108 (a constexpr branch)
            y = gated(acc.to(dtype), acc_up.to(dtype), 0)  # SILU
        else:
            y = acc.to(dtype)
        tl.store(out_ptr + rows, y, mask=rows < row_end)
        acc = tl.zeros([ROWS], dtype=tl.float32)
        acc_up = tl.zeros([ROWS], dtype=tl.float32)
    return acc, acc_up


@triton.jit
def _gemm_stage(w_ptr, out_ptr, N: tl.constexpr, K: tl.constexpr, pid, num_programs, w, wu,
                x_ptr, r_ptr, o_ptr, nw_ptr, rstd,
                MODE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GATED: tl.constexpr,
                ROWS: tl.constexpr, BK: tl.constexpr, KT: tl.constexpr, PIPE: tl.constexpr,
                BALANCED: tl.constexpr, SUB: tl.constexpr, x_in, x_in_odd, X_READY: tl.constexpr):
    """``out[:N] = input @ w.T`` (or ``silu(input @ gate.T) * (input @ up.T)`` when ``GATED``,
    ``w_ptr`` then ``[2N, K]``) over program ``pid``'s tiles (row chunk ``pid + i P``, K tile
    ``kt``), ``w``/``wu`` its first tile(s), already requested. The later tiles: with
    ``PIPE > 1`` Triton's software pipeline (asynchronous copies into shared memory, ``PIPE``
    stages); else each tile's successor is requested into registers before its product (the
    compiler may still schedule it later). ``BALANCED`` (one K tile, ``ROWS`` at least the
    largest share): ``w``/``wu`` hold the program's whole share (:func:`_share`), one product.
    ``SUB`` > 0: the tiles are bf16 pairs (:func:`_w_rows`, :func:`_pair_dot`). ``X_READY`` (one K
    tile): the input is ``x_in`` / ``x_in_odd`` already (:func:`_norm_pairs`)."""
    if X_READY:
        x, x_odd = x_in, x_in_odd
    else:
        x, x_odd = _gemm_x(0, K, x_ptr, r_ptr, o_ptr, nw_ptr, rstd, MODE, HAS_RESIDUAL, BK, SUB)
    if BALANCED:
        lo, hi = _share(pid, num_programs, N)
        acc = tl.zeros([ROWS], dtype=tl.float32)
        _accumulate(acc, acc, w, wu, x, x_odd, 0, lo, hi, out_ptr, GATED, ROWS, 1, SUB)
    else:
        n_chunks = tl.cdiv(N, ROWS)
        tiles = ((n_chunks - pid + num_programs - 1) // num_programs) * KT
        acc = tl.zeros([ROWS], dtype=tl.float32)
        acc_up = tl.zeros([ROWS], dtype=tl.float32)
        if PIPE > 1:
            acc, acc_up = _accumulate(acc, acc_up, w, wu, x, x_odd, 0, pid * ROWS, N, out_ptr, GATED, ROWS, KT,
                                      SUB)  # tile 0
            for j in tl.range(1, tiles, num_stages=PIPE):
                chunk = pid + (j // KT) * num_programs
                w = _w_tile(w_ptr, chunk, j % KT, N, K, True, ROWS, BK, SUB)
                if GATED:
                    wu = _w_tile(w_ptr + N * K, chunk, j % KT, N, K, True, ROWS, BK, SUB)
                if KT > 1:
                    x, x_odd = _gemm_x(j % KT, K, x_ptr, r_ptr, o_ptr, nw_ptr, rstd, MODE, HAS_RESIDUAL, BK, SUB)
                acc, acc_up = _accumulate(acc, acc_up, w, wu, x, x_odd, j, chunk * ROWS, N, out_ptr, GATED, ROWS, KT,
                                          SUB)
        else:
            for j in range(tiles):
                nxt = j + 1
                chunk_next = pid + (nxt // KT) * num_programs
                w_next = _w_tile(w_ptr, chunk_next, nxt % KT, N, K, nxt < tiles, ROWS, BK, SUB)
                if GATED:
                    wu_next = _w_tile(w_ptr + N * K, chunk_next, nxt % KT, N, K, nxt < tiles, ROWS, BK, SUB)
                if KT > 1:
                    x, x_odd = _gemm_x(j % KT, K, x_ptr, r_ptr, o_ptr, nw_ptr, rstd, MODE, HAS_RESIDUAL, BK, SUB)
                acc, acc_up = _accumulate(acc, acc_up, w, wu, x, x_odd, j, (pid + (j // KT) * num_programs) * ROWS, N,
                                          out_ptr, GATED, ROWS, KT, SUB)
                w = w_next
                if GATED:
                    wu = wu_next


# ----------------------------------------------------------------------------- attention stages


@triton.jit
def _norm_halves(w_ptr, dh, QK_NORM: tl.constexpr, HALF: tl.constexpr):
    """A QK-norm weight as two halves ``[1, HALF]`` in its dtype (zeros without ``QK_NORM``)."""
    if QK_NORM:
        w1 = tl.load(w_ptr + dh)[None, :]
        w2 = tl.load(w_ptr + HALF + dh)[None, :]
    else:
        w1 = tl.zeros([1, HALF], dtype=tl.float32)
        w2 = tl.zeros([1, HALF], dtype=tl.float32)
    return w1, w2


@triton.jit
def _rotary_row(cos_ptr, sin_ptr, pos, stride_cos, stride_sin, dh):
    """The rotary row of ``pos``: float32 ``[1, HALF]`` cos and sin."""
    cos = tl.load(cos_ptr + pos * stride_cos + dh).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + pos * stride_sin + dh).to(tl.float32)[None, :]
    return cos, sin


@triton.jit
def _rope_inputs(cos_ptr, sin_ptr, qn_ptr, kn_ptr, pos, stride_cos, stride_sin, QK_NORM: tl.constexpr,
                 HALF: tl.constexpr):
    """What the attention stage's QK-norm and RoPE read besides q, k, v: the rotary row of
    ``pos`` (:func:`_rotary_row`) and the q- and k-norm weights' halves."""
    dh = tl.arange(0, HALF)
    cos, sin = _rotary_row(cos_ptr, sin_ptr, pos, stride_cos, stride_sin, dh)
    qw1, qw2 = _norm_halves(qn_ptr, dh, QK_NORM, HALF)
    kw1, kw2 = _norm_halves(kn_ptr, dh, QK_NORM, HALF)
    return cos, sin, qw1, qw2, kw1, kw2


@triton.jit
def _early_rope_inputs(cos_ptr, sin_ptr, qn_ptr, kn_ptr, pos, stride_cos, stride_sin, QK_NORM: tl.constexpr,
                       HALF: tl.constexpr, ROPE_EARLY: tl.constexpr):
    """What ``rope_early`` requests ahead of the attention stage, as :func:`_rope_inputs`'s six
    values: the k-norm weight's halves (1; zeros for the rest, which the stage loads itself) or
    all of them (2)."""
    if ROPE_EARLY == 2:
        cos, sin, qw1, qw2, kw1, kw2 = _rope_inputs(cos_ptr, sin_ptr, qn_ptr, kn_ptr, pos, stride_cos, stride_sin,
                                                    QK_NORM, HALF)
    else:
        kw1, kw2 = _norm_halves(kn_ptr, tl.arange(0, HALF), QK_NORM, HALF)
        cos, sin, qw1, qw2 = kw1, kw1, kw1, kw1
    return cos, sin, qw1, qw2, kw1, kw2


@triton.jit
def _norm_rope(x1, x2, w1, w2, cos, sin, eps, QK_NORM: tl.constexpr, HALF: tl.constexpr):
    """(QK-norm with weight halves ``w1``/``w2`` and) RoPE of rows given as halves ``x1``/``x2
    [R, HALF]``: qk_norm_rope's arithmetic (Llama / Qwen numerics), or rotary's without the
    norm; rounded to the dtype."""
    if QK_NORM:
        return norm_rope(x1, x2, w1.to(tl.float32), w2.to(tl.float32), cos, sin, eps, HALF, False)
    h1 = x1.to(tl.float32)
    h2 = x2.to(tl.float32)
    return (h1 * cos - h2 * sin).to(x1.dtype), (h2 * cos + h1 * sin).to(x1.dtype)


@triton.jit
def _split_tiles(item, seq_len, TILE: tl.constexpr, SPLITS: tl.constexpr, active):
    """Key tiles ``[t0, t1)`` of split ``item % SPLITS`` (paged_attention's split rule over the
    ``active`` splits, :func:`_active_splits`: those from ``active`` on are empty) and the number
    of tiles."""
    tiles = tl.cdiv(seq_len, TILE)
    per_split = tl.cdiv(tiles, active)
    t0 = tl.minimum((item % SPLITS) * per_split, tiles)
    t1 = tl.minimum(t0 + per_split, tiles)
    return t0, t1, tiles


@triton.jit
def _active_splits(seq_len, TILE: tl.constexpr, SPLITS: tl.constexpr, MIN_SPLITS: tl.constexpr):
    """How many of the ``SPLITS`` key splits per KV head this step uses: all of them; or, with
    ``MIN_SPLITS`` (a smaller power of two, ``min_splits``), the fewest powers of two from
    ``MIN_SPLITS`` up that give each split at most one key tile (at most ``SPLITS``)."""
    if MIN_SPLITS == 0 or MIN_SPLITS >= SPLITS:
        return SPLITS
    tiles = tl.cdiv(seq_len, TILE)
    active = tl.full((), MIN_SPLITS, tl.int32)
    for _ in tl.static_range(8):  # (doublings: SPLITS / MIN_SPLITS is at most 2^8)
        active = tl.where((active < tiles) & (active < SPLITS), active * 2, active)
    return active


@triton.jit
def _kv_tile(cache_ptr, table_ptr, g, tile, seq_len, stride_kv, stride_block, stride_slot,
             HEAD_DIM: tl.constexpr, TILE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """KV head ``g``'s keys of ``tile`` as two transposed halves ``[HALF, TILE]``, its values
    ``[TILE, HEAD_DIM]`` from the paged cache (zeros past ``seq_len``) and which keys lie before
    ``seq_len``."""
    HALF: tl.constexpr = HEAD_DIM // 2
    dh = tl.arange(0, HALF)
    dd = tl.arange(0, HEAD_DIM)
    keys = tile * TILE + tl.arange(0, TILE)
    key_ok = keys < seq_len
    off = _key_offsets(table_ptr, keys, key_ok, stride_block, stride_slot, BLOCK_SIZE)
    head_ptr = cache_ptr + g * HEAD_DIM
    k_ptrs = head_ptr + off[None, :] + dh[:, None]  # [HALF, TILE]: K transposed, first half
    k1 = tl.load(k_ptrs, mask=key_ok[None, :], other=0.0, cache_modifier=".cg")
    k2 = tl.load(k_ptrs + HALF, mask=key_ok[None, :], other=0.0, cache_modifier=".cg")
    v = tl.load(head_ptr + stride_kv + off[:, None] + dd[None, :], mask=key_ok[:, None], other=0.0,
                cache_modifier=".cg")
    return k1, k2, v, key_ok


@triton.jit
def _key_offsets(table_ptr, keys, key_ok, stride_block, stride_slot, BLOCK_SIZE: tl.constexpr):
    """Each of ``keys``' slot offset (elements) in the paged cache: its block from the block
    table (read where ``key_ok``, block 0 elsewhere) and its place in the block."""
    block = tl.load(table_ptr + keys // BLOCK_SIZE, mask=key_ok, other=0)
    return block.to(tl.int64) * stride_block + (keys % BLOCK_SIZE).to(tl.int64) * stride_slot


@triton.jit
def _kv_ahead(item, cache_ptr, table_ptr, seq_len, stride_kv, stride_block, stride_slot, HEAD_DIM: tl.constexpr,
              TILE: tl.constexpr, BLOCK_SIZE: tl.constexpr, SPLITS: tl.constexpr, active, KEYS: tl.constexpr):
    """``kv_ahead``: ask L2 for the key and value rows of attention item ``item``'s tiles after
    its first (earlier steps' keys only, as :func:`_kv_tile` reads them), ``KEYS`` keys at a
    time: their block-table entries in one load, then a ``prefetch.global.L2`` of every 128-byte
    line of their key and value rows (one per element of a ``[KEYS, lines]`` tile: no thread
    waits for another's). A hint: nothing waits for the data and no register holds it; the tile
    loop's loads then find the rows in L2 and the table entries in L1, instead of two dependent
    DRAM round trips per tile. Nothing happens when the split has at most one tile (contexts up
    to ``SPLITS x TILE`` keys)."""
    EB: tl.constexpr = cache_ptr.dtype.element_ty.primitive_bitwidth // 8
    LINES: tl.constexpr = (HEAD_DIM * EB + 127) // 128  # 128-byte lines per row
    line = tl.arange(0, LINES) * (128 // EB)
    t0, t1, _ = _split_tiles(item, seq_len, TILE, SPLITS, active)
    hi = tl.minimum(t1 * TILE, seq_len - 1)  # (the step's own key comes from registers)
    head_ptr = cache_ptr + (item // SPLITS) * HEAD_DIM
    for k0 in range((t0 + 1) * TILE, hi, KEYS):
        keys = k0 + tl.arange(0, KEYS)
        ok = keys < hi
        rows = head_ptr + _key_offsets(table_ptr, keys, ok, stride_block, stride_slot, BLOCK_SIZE)
        lines = rows[:, None] + line[None, :]
        lines_ok = ok[:, None] & (line[None, :] >= 0)
        _l2_prefetch_lines(lines, lines_ok)
        _l2_prefetch_lines(lines + stride_kv, lines_ok)


@triton.jit
def _l2_prefetch_lines(ptrs, mask):
    """``prefetch.global.L2`` of the line that holds each of ``ptrs`` where ``mask`` (each thread
    its own elements; a hint: nothing receives the data)."""
    tl.inline_asm_elementwise(
        "{\n.reg .pred p;\nsetp.ne.s32 p, $2, 0;\n@p prefetch.global.L2 [$1];\nmov.b32 $0, 0;\n}",
        "=r,l,r", [ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _first_kv(item, valid, cache_ptr, table_ptr, seq_len, stride_kv, stride_block, stride_slot,
              HEAD_DIM: tl.constexpr, TILE: tl.constexpr, BLOCK_SIZE: tl.constexpr, SPLITS: tl.constexpr, active):
    """The first key tile of attention item ``item`` (:func:`_kv_tile`; nothing when not
    ``valid``), only the keys of earlier steps: they do not depend on this step, so they are
    requested before the query is (or before the barrier that precedes the attention)."""
    t0, _, _ = _split_tiles(item, seq_len, TILE, SPLITS, active)
    return _kv_tile(cache_ptr, table_ptr, item // SPLITS, t0, tl.where(valid, seq_len - 1, 0),
                    stride_kv, stride_block, stride_slot, HEAD_DIM, TILE, BLOCK_SIZE)


@triton.jit
def _step_metadata(seq_lens_ptr, pos_ptr, slot_ptr):
    """The step's sequence length, position and cache slot."""
    return tl.load(seq_lens_ptr), tl.load(pos_ptr).to(tl.int64), tl.load(slot_ptr).to(tl.int64)


@triton.jit
def _tile_scores(q1, q2, k1, k2, key_ok, qk_scale, PRECISION: tl.constexpr):
    """Scores ``[M, TILE]`` (log2 units) of the query halves against a key tile's transposed
    halves, ``-inf`` where ``key_ok`` is false."""
    s = tl.dot(q1, k1.to(q1.dtype), input_precision=PRECISION)
    s = tl.dot(q2, k2.to(q1.dtype), s, input_precision=PRECISION) * qk_scale
    return tl.where(key_ok[None, :], s, float("-inf"))


@triton.jit
def _own_key_step(acc, m_i, l_i, s, v):
    """:func:`online_softmax_step` for one key held in registers: scores ``s [M]`` (log2
    units), value ``v [1, D]``; the probabilities rounded to ``v``'s dtype for the product."""
    m_new = tl.maximum(m_i, s)
    p = tl.exp2(s - m_new)
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + p
    acc = acc * alpha[:, None] + p.to(v.dtype).to(tl.float32)[:, None] * v.to(tl.float32)
    return acc, m_new, l_i


@triton.jit
def _attention_item(item, k1, k2, v, key_ok, qkv_ptr, cache_ptr, table_ptr, seq_len, pos, slot, cos_ptr, sin_ptr,
                    qn_ptr, kn_ptr, eps, qk_scale, part_acc_ptr, part_max_ptr, part_sum_ptr,
                    stride_kv, stride_block, stride_slot, stride_cos, stride_sin, timeline_ptr, pid,
                    TIMELINE: tl.constexpr,
                    HQ: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr,
                    BLOCK_M: tl.constexpr, TILE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    QK_NORM: tl.constexpr, PRECISION: tl.constexpr,
                    cos, sin, qw1, qw2, kw1, kw2, ROPE_EARLY: tl.constexpr, active):
    """KV head ``item // SPLITS``, key split ``item % SPLITS`` (of the ``active`` ones,
    :func:`_active_splits`): partial attention of the head's query group over the split's
    tiles (paged_attention's split rule and tile arithmetic), the
    first tile ``k1``/``k2``/``v``/``key_ok`` already requested (:func:`_first_kv`). The tiles
    hold the keys of earlier steps only; the split that holds the step's own position stores
    the step's K and V into the cache and takes that key from registers, last. ``ROPE_EARLY``: the
    k-norm weight (1) or the rotary row and both norm weights (2) come in
    (:func:`_early_rope_inputs`, requested before the stage's barrier); else they are loaded
    here, the k-norm weight after the query's norm."""
    HALF: tl.constexpr = HEAD_DIM // 2
    GROUP: tl.constexpr = HQ // HKV
    g = item // SPLITS
    dh = tl.arange(0, HALF)
    dd = tl.arange(0, HEAD_DIM)
    t0, t1, tiles = _split_tiles(item, seq_len, TILE, SPLITS, active)
    own = (t0 < t1) & (t1 == tiles)  # this split holds the step's own position
    # every load of the stage at once: the query group, the own key and value (masked off in the
    # other splits), the rotary row
    if ROPE_EARLY < 2:
        cos, sin = _rotary_row(cos_ptr, sin_ptr, pos, stride_cos, stride_sin, dh)
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < GROUP
    head = g * GROUP + rows
    q_row = qkv_ptr + head[:, None] * HEAD_DIM + dh[None, :]
    q_ok = row_ok[:, None] & (dh[None, :] < HALF)
    k_row = qkv_ptr + (HQ + g) * HEAD_DIM + dh[None, :]
    v_row = qkv_ptr + (HQ + HKV + g) * HEAD_DIM + dd[None, :]
    own_h = tl.where(own, dh[None, :] < HALF, False)  # block masks (the interpreter takes no scalar one)
    own_d = tl.where(own, dd[None, :] < HEAD_DIM, False)
    q1 = tl.load(q_row, mask=q_ok, other=0, cache_modifier=".cg")
    q2 = tl.load(q_row + HALF, mask=q_ok, other=0, cache_modifier=".cg")
    kn1 = tl.load(k_row, mask=own_h, other=0, cache_modifier=".cg")
    kn2 = tl.load(k_row + HALF, mask=own_h, other=0, cache_modifier=".cg")
    vn = tl.load(v_row, mask=own_d, other=0, cache_modifier=".cg")
    if ROPE_EARLY < 2:
        qw1, qw2 = _norm_halves(qn_ptr, dh, QK_NORM, HALF)
    q1, q2 = _norm_rope(q1, q2, qw1, qw2, cos, sin, eps, QK_NORM, HALF)
    _stamp(timeline_ptr, pid, 16, TIMELINE)
    if not ROPE_EARLY:
        kw1, kw2 = _norm_halves(kn_ptr, dh, QK_NORM, HALF)
    kn1, kn2 = _norm_rope(kn1, kn2, kw1, kw2, cos, sin, eps, QK_NORM, HALF)
    if own & (slot >= 0):  # the step's K and V into the paged cache (no load in this launch reads them)
        dst = cache_ptr + slot * stride_slot + g * HEAD_DIM
        cdt = cache_ptr.dtype.element_ty
        tl.store(dst + dh[None, :], kn1.to(cdt))
        tl.store(dst + HALF + dh[None, :], kn2.to(cdt))
        tl.store(dst + stride_kv + dd[None, :], vn.to(cdt))
    _stamp(timeline_ptr, pid, 17, TIMELINE)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # the first tile, outside the loop (a tile carried into the loop would hold its registers
    # twice); an empty split's is all masked and changes nothing
    s = _tile_scores(q1, q2, k1, k2, key_ok, qk_scale, PRECISION)
    if TIMELINE:  # noqa: SIM102 (a constexpr branch around a runtime one)
        if t0 < t1:
            _stamp_after(timeline_ptr, pid, 21, tl.max(tl.max(s, 1), 0), TIMELINE)
    acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v.to(q1.dtype), PRECISION)
    if TIMELINE:  # noqa: SIM102 (a constexpr branch around a runtime one)
        if t0 < t1:
            _stamp_after(timeline_ptr, pid, 22, tl.max(tl.max(acc, 1), 0), TIMELINE)
    for tile in range(t0 + 1, t1):
        k1, k2, v, key_ok = _kv_tile(cache_ptr, table_ptr, g, tile, seq_len - 1, stride_kv, stride_block,
                                     stride_slot, HEAD_DIM, TILE, BLOCK_SIZE)
        s = _tile_scores(q1, q2, k1, k2, key_ok, qk_scale, PRECISION)
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v.to(q1.dtype), PRECISION)
    if own:  # the step's own key, from registers (the same rounding as a cache load)
        kq1 = kn1.to(cache_ptr.dtype.element_ty).to(tl.float32)
        kq2 = kn2.to(cache_ptr.dtype.element_ty).to(tl.float32)
        s_own = (tl.sum(q1.to(tl.float32) * kq1, 1) + tl.sum(q2.to(tl.float32) * kq2, 1)) * qk_scale
        v_own = vn.to(cache_ptr.dtype.element_ty).to(q1.dtype)
        acc, m_i, l_i = _own_key_step(acc, m_i, l_i, s_own, v_own)
    _stamp(timeline_ptr, pid, 18, TIMELINE)

    part = head * SPLITS + item % SPLITS
    tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + dd[None, :], acc, mask=row_ok[:, None])
    tl.store(part_max_ptr + part, m_i, mask=row_ok)
    tl.store(part_sum_ptr + part, l_i, mask=row_ok)
    _stamp(timeline_ptr, pid, 19, TIMELINE)


@triton.jit
def _merge_head(head, attn_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, timeline_ptr, pid,
                TIMELINE: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr, active, AUTO: tl.constexpr):
    """attention_reduce's merge for one query head, into the attention output row (``AUTO``:
    only the ``active`` splits' partials are read, :func:`_active_splits`)."""
    splits = tl.arange(0, SPLITS)
    dd = tl.arange(0, HEAD_DIM)
    base = head * SPLITS
    acc_ptrs = part_acc_ptr + (base + splits)[:, None] * HEAD_DIM + dd[None, :]
    if AUTO:  # the splits from `active` on hold nothing this step
        on = splits < active
        m = tl.load(part_max_ptr + base + splits, mask=on, other=float("-inf"), cache_modifier=".cg")
        sums = tl.load(part_sum_ptr + base + splits, mask=on, other=0.0, cache_modifier=".cg")
        acc = tl.load(acc_ptrs, mask=on[:, None], other=0.0, cache_modifier=".cg")
    else:
        m = tl.load(part_max_ptr + base + splits, cache_modifier=".cg")
        sums = tl.load(part_sum_ptr + base + splits, cache_modifier=".cg")
        acc = tl.load(acc_ptrs, cache_modifier=".cg")
    _stamp_after(timeline_ptr, pid, 23, tl.max(tl.max(acc, 1), 0) + tl.max(m + sums, 0), TIMELINE)
    out = merge_splits(m, sums, acc)
    tl.store(attn_ptr + head * HEAD_DIM + dd, out.to(attn_ptr.dtype.element_ty))


@triton.jit
def _stage_barrier(counters_ptr, index, target, error_ptr, w_ptr, nw_ptr, pid, num_programs, N: tl.constexpr,
                   K: tl.constexpr, GATED: tl.constexpr, NORM: tl.constexpr, ROWS: tl.constexpr, BK: tl.constexpr,
                   BALANCED: tl.constexpr, SUB: tl.constexpr, w, wu, nw, ENABLED: tl.constexpr,
                   ARRIVE_FIRST: tl.constexpr, PREFETCH: tl.constexpr, POLL_SLEEP: tl.constexpr,
                   timeline_ptr, TIMELINE: tl.constexpr):
    """Barrier ``index`` (2, 3, 4: before o_proj, gate/up, down) of a one-launch layer when
    ``ENABLED``, with the next GEMM stage's first weight tiles (and with ``NORM`` its norm
    weight's words) requested ahead (``PREFETCH``), after the arrival with ``ARRIVE_FIRST`` (its
    fence then does not wait for them), else before it; the timeline's points ``2 index + 2``
    (arrived, tiles requested) and ``2 index + 3`` (passed). ``(w, wu, nw)``: those tiles, or the
    ones given when none were requested."""
    if ARRIVE_FIRST and ENABLED:
        seen = _arrive(counters_ptr, index)
    if PREFETCH and ENABLED:
        w, wu = _first_tiles(w_ptr, pid, num_programs, N, K, GATED, ROWS, BK, BALANCED, SUB)
        if NORM:
            nw = _norm_words(nw_ptr, K, BK, SUB)
    _stamp(timeline_ptr, pid, 2 * index + 2, TIMELINE)
    if ENABLED:
        if not ARRIVE_FIRST:
            seen = _arrive(counters_ptr, index)
        _wait(counters_ptr, index, seen, target, error_ptr, POLL_SLEEP)
    _stamp(timeline_ptr, pid, 2 * index + 3, TIMELINE)
    return w, wu, nw


# ----------------------------------------------------------------------------- the layer


@triton.jit
def _decode_layer_kernel(
    x_ptr, res_ptr, out_ptr, res_out_ptr,
    w_qkv_ptr, w_o_ptr, w_gu_ptr, w_down_ptr, ln1_ptr, ln2_ptr, qn_ptr, kn_ptr, eps,
    cos_ptr, sin_ptr, pos_ptr, cache_ptr, table_ptr, seq_lens_ptr, slot_ptr,
    stride_kv, stride_block, stride_slot, stride_cos, stride_sin, qk_scale,
    qkv_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, attn_ptr, o_ptr, act_ptr,
    counters_ptr, error_ptr, timeline_ptr, num_programs,
    HIDDEN: tl.constexpr, INTER: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr,
    SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, TILE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    QK_NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    ROWS_QKV: tl.constexpr, BK_QKV: tl.constexpr, ROWS_O: tl.constexpr, BK_O: tl.constexpr,
    ROWS_GU: tl.constexpr, BK_GU: tl.constexpr, ROWS_DOWN: tl.constexpr, BK_DOWN: tl.constexpr,
    BAL_QKV: tl.constexpr, BAL_O: tl.constexpr, BAL_GU: tl.constexpr, BAL_DOWN: tl.constexpr,
    SUB_QKV: tl.constexpr, SUB_O: tl.constexpr, SUB_GU: tl.constexpr, SUB_DOWN: tl.constexpr,
    STAGE: tl.constexpr, LAST: tl.constexpr, PREFETCH: tl.constexpr, PIPE: tl.constexpr,
    PRECISION: tl.constexpr, PDL: tl.constexpr, POLL_SLEEP: tl.constexpr, TIMELINE: tl.constexpr,
    ARRIVE_FIRST: tl.constexpr, KV_EARLY: tl.constexpr, NORM_ONCE: tl.constexpr, ROPE_EARLY: tl.constexpr,
    GROUP_SYNC: tl.constexpr, KV_AHEAD: tl.constexpr = False, MIN_SPLITS: tl.constexpr = 0,
):
    ALL: tl.constexpr = STAGE < 0
    AUTO: tl.constexpr = MIN_SPLITS > 0 and MIN_SPLITS < SPLITS  # min_splits: the splits a step uses vary
    NQKV: tl.constexpr = (HQ + 2 * HKV) * HEAD_DIM
    NATTN: tl.constexpr = HQ * HEAD_DIM
    KT_QKV: tl.constexpr = (HIDDEN + BK_QKV - 1) // BK_QKV
    KT_O: tl.constexpr = (NATTN + BK_O - 1) // BK_O
    KT_GU: tl.constexpr = (HIDDEN + BK_GU - 1) // BK_GU
    KT_DOWN: tl.constexpr = (INTER + BK_DOWN - 1) // BK_DOWN
    # norm_once: the two norm stages (qkv, gate/up) load their input row once (_norm_pairs), with
    # the norm weight requested early beside the stage's first tiles
    QKV_ONCE: tl.constexpr = NORM_ONCE and SUB_QKV > 0 and KT_QKV == 1
    GU_ONCE: tl.constexpr = NORM_ONCE and SUB_GU > 0 and KT_GU == 1
    pid = tl.program_id(0)
    ATTN: tl.constexpr = (ALL and LAST >= 2) or STAGE == 2  # this launch runs the attention stage
    # group_sync: no barrier 0; each attention item waits for the producers of its KV group's rows only
    # (and with 2, no barrier 1: each merge waits for its KV group's attention items only)
    GS: tl.constexpr = GROUP_SYNC > 0 and ALL and LAST >= 2 and BAL_QKV
    GS2: tl.constexpr = GS and GROUP_SYNC >= 2 and LAST >= 3
    _stamp(timeline_ptr, pid, 0, TIMELINE)
    nw = 0  # (the norm weight's words when QKV_ONCE / GU_ONCE)
    w, wu = 0.0, 0.0  # (a stage's first weight tiles, once requested)
    cos, sin, qw1, qw2, kw1, kw2 = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0

    # kv_early = 2: the step's metadata and the first key tile (earlier steps' keys) at the launch's
    # start, with the qkv tiles: all were written before the previous launch began (see pdl)
    # (stage by stage: each stage's first weight tiles, and attention's first key tile, before its PDL wait)
    KV_START: tl.constexpr = KV_EARLY == 2 and ((ALL and LAST >= 2) or STAGE == 2)
    if (ALL and LAST >= 1) or STAGE == 1:
        w, wu = _first_tiles(w_qkv_ptr, pid, num_programs, NQKV, HIDDEN, False, ROWS_QKV, BK_QKV, BAL_QKV, SUB_QKV)
        if QKV_ONCE:
            nw = _norm_words(ln1_ptr, HIDDEN, BK_QKV, SUB_QKV)
    if PREFETCH and STAGE == 4:
        w, wu = _first_tiles(w_o_ptr, pid, num_programs, HIDDEN, NATTN, False, ROWS_O, BK_O, BAL_O, SUB_O)
    if PREFETCH and STAGE == 5:
        w, wu = _first_tiles(w_gu_ptr, pid, num_programs, INTER, HIDDEN, True, ROWS_GU, BK_GU, BAL_GU, SUB_GU)
        if GU_ONCE:
            nw = _norm_words(ln2_ptr, HIDDEN, BK_GU, SUB_GU)
    if PREFETCH and STAGE == 6:
        w, wu = _first_tiles(w_down_ptr, pid, num_programs, HIDDEN, INTER, False, ROWS_DOWN, BK_DOWN, BAL_DOWN,
                             SUB_DOWN)
    if KV_START:
        tl.debug_barrier()  # keeps the qkv tiles' requests first (ptxas would put the key tile's chain ahead)
        seq_len, pos, slot = _step_metadata(seq_lens_ptr, pos_ptr, slot_ptr)
        active = _active_splits(seq_len, TILE, SPLITS, MIN_SPLITS)
        k1, k2, v, key_ok = _first_kv(pid, pid < HKV * SPLITS, cache_ptr, table_ptr, seq_len, stride_kv,
                                      stride_block, stride_slot, HEAD_DIM, TILE, BLOCK_SIZE, SPLITS, active)
    if ROPE_EARLY and KV_START and not ALL:
        cos, sin, qw1, qw2, kw1, kw2 = _early_rope_inputs(cos_ptr, sin_ptr, qn_ptr, kn_ptr, pos, stride_cos,
                                                          stride_sin, QK_NORM, HEAD_DIM // 2, ROPE_EARLY)
    if PDL:
        wait_for_prior()
    if ALL and LAST >= 2:
        target, epoch = _target(counters_ptr, num_programs)
    else:  # (stage by stage: no barriers)
        target = 0
    _stamp(timeline_ptr, pid, 1, TIMELINE)
    if (ALL and LAST >= 1) or STAGE == 1:  # qkv = rms_norm(x + residual) @ w_qkv.T
        rstd, xn, xn_odd, ready = _norm_stage_input(x_ptr, res_ptr, o_ptr, res_out_ptr, nw, HIDDEN, eps, False, 1,
                                                    HAS_RESIDUAL, BK_QKV, KT_QKV, SUB_QKV, QKV_ONCE)
        _stamp_after(timeline_ptr, pid, 24, ready, TIMELINE)
        _gemm_stage(w_qkv_ptr, qkv_ptr, NQKV, HIDDEN, pid, num_programs, w, wu, x_ptr, res_ptr, o_ptr, ln1_ptr,
                    rstd, 1, HAS_RESIDUAL, False, ROWS_QKV, BK_QKV, KT_QKV, PIPE, BAL_QKV, SUB_QKV, xn, xn_odd,
                    QKV_ONCE)
    _stamp(timeline_ptr, pid, 2, TIMELINE)
    if GS:
        _group_arrive(counters_ptr, pid, num_programs, NQKV, HQ, HKV, HEAD_DIM)
    elif ARRIVE_FIRST and ALL and LAST >= 2:
        seen = _arrive(counters_ptr, 0)
    if ATTN and not KV_START:  # the first key tile (no dependence on qkv)
        seq_len, pos, slot = _step_metadata(seq_lens_ptr, pos_ptr, slot_ptr)
        active = _active_splits(seq_len, TILE, SPLITS, MIN_SPLITS)
        if KV_EARLY:
            k1, k2, v, key_ok = _first_kv(pid, pid < HKV * SPLITS, cache_ptr, table_ptr, seq_len, stride_kv,
                                          stride_block, stride_slot, HEAD_DIM, TILE, BLOCK_SIZE, SPLITS, active)
    if ALL and LAST >= 2:
        if not GS and not ARRIVE_FIRST:
            seen = _arrive(counters_ptr, 0)
        if ROPE_EARLY:  # (after the arrival, barrier 0's or group_sync's: its fence does not wait for them)
            cos, sin, qw1, qw2, kw1, kw2 = _early_rope_inputs(cos_ptr, sin_ptr, qn_ptr, kn_ptr, pos, stride_cos,
                                                              stride_sin, QK_NORM, HEAD_DIM // 2, ROPE_EARLY)
        if not GS:
            _wait(counters_ptr, 0, seen, target, error_ptr, POLL_SLEEP)
    _stamp(timeline_ptr, pid, 3, TIMELINE)
    if ROPE_EARLY and ATTN and not ALL and not KV_START:  # (stage by stage without the early start)
        cos, sin, qw1, qw2, kw1, kw2 = _early_rope_inputs(cos_ptr, sin_ptr, qn_ptr, kn_ptr, pos, stride_cos,
                                                          stride_sin, QK_NORM, HEAD_DIM // 2, ROPE_EARLY)
    if ATTN:  # QK-norm, RoPE, K/V store, split attention
        for item in range(pid, HKV * SPLITS, num_programs):
            if KV_EARLY:
                if item != pid:  # a later item of this program (fewer programs than items)
                    k1, k2, v, key_ok = _first_kv(item, True, cache_ptr, table_ptr, seq_len, stride_kv,
                                                  stride_block, stride_slot, HEAD_DIM, TILE, BLOCK_SIZE, SPLITS,
                                                  active)
            else:  # (requested here, not before the loop: carried into it, the tile's registers double)
                k1, k2, v, key_ok = _first_kv(item, True, cache_ptr, table_ptr, seq_len, stride_kv, stride_block,
                                              stride_slot, HEAD_DIM, TILE, BLOCK_SIZE, SPLITS, active)
            if KV_AHEAD:  # the split's later key tiles into L2 (earlier steps' keys: no wait needed)
                _kv_ahead(item, cache_ptr, table_ptr, seq_len, stride_kv, stride_block, stride_slot, HEAD_DIM,
                          TILE, BLOCK_SIZE, SPLITS, active, 2 * TILE)
            # (min_splits: a split this step does not use has nothing to do: the merge skips it)
            if (item % SPLITS < active) if AUTO else True:
                if GS:  # this item's KV group's qkv rows are stored
                    target_g = _group_target(item // SPLITS, epoch, num_programs, NQKV, HQ, HKV, HEAD_DIM)
                    _wait(counters_ptr, GROUP_SLOT + item // SPLITS, target_g - 1, target_g, error_ptr, POLL_SLEEP)
                _attention_item(item, k1, k2, v, key_ok, qkv_ptr, cache_ptr, table_ptr, seq_len, pos, slot, cos_ptr,
                                sin_ptr, qn_ptr, kn_ptr, eps, qk_scale, part_acc_ptr, part_max_ptr, part_sum_ptr,
                                stride_kv, stride_block, stride_slot, stride_cos, stride_sin, timeline_ptr, pid,
                                TIMELINE, HQ, HKV, HEAD_DIM, SPLITS, BLOCK_M, TILE, BLOCK_SIZE, QK_NORM, PRECISION,
                                cos, sin, qw1, qw2, kw1, kw2, ROPE_EARLY, active)
            if GS2:  # this item's partials are stored (every thread's: the CTA barrier first)
                tl.debug_barrier()
                tl.atomic_add(counters_ptr + GROUP_SLOT + HKV + item // SPLITS, 1, sem="release", scope="gpu")
    _stamp(timeline_ptr, pid, 4, TIMELINE)
    if ALL and LAST >= 3 and not GS2:
        _grid_barrier(counters_ptr, 1, target, error_ptr, POLL_SLEEP)
    _stamp(timeline_ptr, pid, 5, TIMELINE)
    if (ALL and LAST >= 3) or STAGE == 3:  # split-KV merge
        if AUTO and not ATTN:  # (stage by stage: this launch has not read the step's length)
            active = _active_splits(tl.load(seq_lens_ptr), TILE, SPLITS, MIN_SPLITS)
        elif not AUTO:
            active = SPLITS
        for head in range(pid, HQ, num_programs):
            if GS2:  # the head's KV group's splits all stored their partials
                _wait(counters_ptr, GROUP_SLOT + HKV + head // (HQ // HKV), (epoch + 1) * SPLITS - 1,
                      (epoch + 1) * SPLITS, error_ptr, POLL_SLEEP)
            _merge_head(head, attn_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, timeline_ptr, pid, TIMELINE,
                        HEAD_DIM, SPLITS, active, AUTO)
            _stamp(timeline_ptr, pid, 20, TIMELINE)
    w, wu, nw = _stage_barrier(counters_ptr, 2, target, error_ptr, w_o_ptr, ln2_ptr, pid, num_programs, HIDDEN,
                               NATTN, False, False, ROWS_O, BK_O, BAL_O, SUB_O, w, wu, nw, ALL and LAST >= 4,
                               ARRIVE_FIRST, PREFETCH, POLL_SLEEP, timeline_ptr, TIMELINE)
    if (ALL and LAST >= 4) or STAGE == 4:  # o = attn @ w_o.T
        if not PREFETCH:
            w, wu = _first_tiles(w_o_ptr, pid, num_programs, HIDDEN, NATTN, False, ROWS_O, BK_O, BAL_O, SUB_O)
        _gemm_stage(w_o_ptr, o_ptr, HIDDEN, NATTN, pid, num_programs, w, wu, attn_ptr, res_ptr, o_ptr, ln2_ptr,
                    0.0, 0, False, False, ROWS_O, BK_O, KT_O, PIPE, BAL_O, SUB_O, 0.0, 0.0, False)
    w, wu, nw = _stage_barrier(counters_ptr, 3, target, error_ptr, w_gu_ptr, ln2_ptr, pid, num_programs, INTER,
                               HIDDEN, True, GU_ONCE, ROWS_GU, BK_GU, BAL_GU, SUB_GU, w, wu, nw, ALL and LAST >= 5,
                               ARRIVE_FIRST, PREFETCH, POLL_SLEEP, timeline_ptr, TIMELINE)
    if (ALL and LAST >= 5) or STAGE == 5:  # h = o + x (+ residual); act(rms_norm(h) @ gate.T) * (rms_norm(h) @ up.T)
        if not PREFETCH:
            w, wu = _first_tiles(w_gu_ptr, pid, num_programs, INTER, HIDDEN, True, ROWS_GU, BK_GU, BAL_GU, SUB_GU)
            if GU_ONCE:
                nw = _norm_words(ln2_ptr, HIDDEN, BK_GU, SUB_GU)
        rstd, xn, xn_odd, ready = _norm_stage_input(x_ptr, res_ptr, o_ptr, res_out_ptr, nw, HIDDEN, eps, pid == 0, 2,
                                                    HAS_RESIDUAL, BK_GU, KT_GU, SUB_GU, GU_ONCE)
        _stamp_after(timeline_ptr, pid, 25, ready, TIMELINE)
        _gemm_stage(w_gu_ptr, act_ptr, INTER, HIDDEN, pid, num_programs, w, wu, x_ptr, res_ptr, o_ptr, ln2_ptr,
                    rstd, 2, HAS_RESIDUAL, True, ROWS_GU, BK_GU, KT_GU, PIPE, BAL_GU, SUB_GU, xn, xn_odd, GU_ONCE)
    w, wu, nw = _stage_barrier(counters_ptr, 4, target, error_ptr, w_down_ptr, ln2_ptr, pid, num_programs, HIDDEN,
                               INTER, False, False, ROWS_DOWN, BK_DOWN, BAL_DOWN, SUB_DOWN, w, wu, nw,
                               ALL and LAST >= 6, ARRIVE_FIRST, PREFETCH, POLL_SLEEP, timeline_ptr, TIMELINE)
    if (ALL and LAST >= 6) or STAGE == 6:  # out = act @ w_down.T
        if not PREFETCH:
            w, wu = _first_tiles(w_down_ptr, pid, num_programs, HIDDEN, INTER, False, ROWS_DOWN, BK_DOWN, BAL_DOWN,
                                 SUB_DOWN)
        _gemm_stage(w_down_ptr, out_ptr, HIDDEN, INTER, pid, num_programs, w, wu, act_ptr, res_ptr, o_ptr, ln2_ptr,
                    0.0, 0, False, False, ROWS_DOWN, BK_DOWN, KT_DOWN, PIPE, BAL_DOWN, SUB_DOWN, 0.0, 0.0, False)
    _stamp(timeline_ptr, pid, 12, TIMELINE)
    if ALL and LAST >= 2:  # noqa: SIM102 (a constexpr branch around a runtime one)
        if pid == 0:  # (every program read the epoch before it arrived at barrier 2, passed here)
            tl.store(counters_ptr + EPOCH_SLOT, epoch + 1)
    _stamp(timeline_ptr, pid, 13, TIMELINE)


# ----------------------------------------------------------------------------- host side


@dataclass(frozen=True, eq=False)
class DecodeLayerWeights:
    """One Llama / Qwen 3 decoder layer's tensors, as the models hold them (``nn.Linear``
    layout, q/k/v and gate/up stacked): ``qkv [(Hq + 2 Hkv) D, H]``, ``o [H, Hq D]``,
    ``gate_up [2 I, H]``, ``down [H, I]``, the two RMSNorm weights ``[H]`` and their ``eps``,
    and Qwen 3's QK-norm weights ``[D]`` (same ``eps``) or ``None``."""

    qkv: torch.Tensor
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    eps: float
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None


@dataclass(frozen=True)
class DecodeLayerConfig:
    """One launch's shape: ``num_programs`` (every one must be resident at once for the
    barriers: the launch checks), ``splits`` key splits per KV head of ``tile`` keys each step, and per
    GEMM stage (qkv, o, gate/up, down) the weight rows per chunk and the K tile width;
    ``prefetch`` requests each GEMM stage's first weight tiles before the barrier before it;
    ``pipeline`` the software-pipeline depth of the GEMM loops; ``poll_sleep`` nanoseconds slept
    before each barrier poll (0: none; CUDA only). ``arrive_first``: at the barriers in front of
    o_proj, gate/up and down, arrive before requesting the stage's first tiles (the arrival's
    GPU-scope fence waits for the loads in flight; in the sm_90 SASS it is a ``MEMBAR.ALL.GPU``
    ahead of the atomic), so the tiles' DRAM round trip overlaps the wait instead of delaying
    the arrival (measured 0.7 µs per layer faster at 4 programs per SM, 1.3 at 2: on by
    default). ``kv_early``: each attention program's first key tile (earlier steps' keys) is
    requested before barrier 0's wait (after the arrival with ``arrive_first``; 1), or at the
    launch's start with the qkv tiles, before the PDL wait (2: the step's metadata and those
    keys were written before the previous launch began), not at the start of the attention
    stage (0). ``balanced`` (per GEMM stage, see :func:`choose_config`): each
    program's rows are one contiguous share of the stage (:func:`_share`, shares differ by at
    most a row), all of it requested before the barrier, one product; ``rows`` is then the
    tile's height (at least the largest share) and ``bk`` covers K. ``pairs`` (per GEMM stage,
    bf16 only): the stage loads its weights as uint32 words of two bf16 values and multiplies
    them by the input's even and odd elements (:func:`_pair_dot`, :func:`pair_sub`); on in
    every stage by default (chains on an H200, µs per layer: Qwen3-0.6B 21.2 against 22.2,
    Llama-3.2-1B 45.2 against 50.1; benchmarks/reports/decode-layer-pairs-2026-12-03-h200).
    ``norm_once``: the norm stages (qkv,
    gate/up) whose input is one bf16 pair tile load it once (:func:`_norm_pairs`): the row kept
    for the sum of squares and the product, the norm weight requested with the stage's first
    tiles (else: the row and the weight again after the reduction's barrier, a second L2 round
    trip on the critical path). ``group_sync`` (with a balanced qkv stage and at most one
    program per qkv row; off in a config built by hand, 2 in the one a launch
    picks for itself, :func:`default_group_sync`): no barrier 0; each program adds one to a KV
    group's counter per interval of that group's qkv rows (its query heads', key's, value's)
    its share holds rows of (:func:`_group_arrive`), and an attention item waits for its own
    group's producers only (:func:`_group_target`): attention starts without waiting for the
    slowest qkv program of every group, and the programs without an attention item go straight
    to barrier 1. ``group_sync = 2``: no barrier 1 either; each attention item adds one to its KV
    group's second counter once its partials are stored, and each merge waits for its head's
    group's splits only; the programs without a merge go straight to barrier 2. ``rope_early``:
    the attention stage's k-norm weight (1) or its
    rotary row and both QK-norm weights (2) are requested between barrier 0's arrival and its
    wait (stage by stage: before the attention launch's PDL wait), not in the stage (0: the
    k-norm weight's load comes after the query's norm, whose CTA reduction ptxas does not
    hoist it over: a dependent L2 round trip in the split that holds the step's key).
    ``kv_ahead`` (off until measured): each attention item asks L2 for its split's key tiles after
    the first at the item's start (:func:`_kv_ahead`), so the tile loop's loads are L2 hits
    instead of two dependent DRAM round trips per tile (the block-table entry, then the rows);
    only splits of more than one tile (contexts over ``splits x tile`` keys) do anything. CUDA
    only (the interpreter runs without it: a hint changes no value). ``min_splits`` (0, off until
    measured; a power of two below ``splits``): each step uses the fewest key
    splits per KV head, from ``min_splits`` up by powers of two, that give each split at most one
    key tile, at most ``splits`` (:func:`_active_splits`); the splits past those do nothing (with
    ``group_sync`` 2 they only arrive) and the merge reads only the used ones. Short contexts
    then take fewer splits (8 splits measured W1 0.642 against 0.647 ms per token at 16) and
    long ones as many as the launch has items for (``splits`` 32 at 2 programs per SM)."""

    num_programs: int
    splits: int
    tile: int
    rows: tuple[int, int, int, int]
    bk: tuple[int, int, int, int]
    num_warps: int = 4
    prefetch: bool = True
    pipeline: int = 1  # software-pipeline stages of the GEMM loops (1: registers, double-buffered)
    last_stage: int = 6  # benchmarks only: a launch that stops after this stage (timing each stage)
    poll_sleep: int = 100
    arrive_first: bool = True
    kv_early: int = 2
    balanced: tuple[bool, bool, bool, bool] = (False, False, False, False)
    pairs: tuple[bool, bool, bool, bool] = (True, True, True, True)
    norm_once: bool = True
    rope_early: int = 1
    group_sync: int = 0
    kv_ahead: bool = False
    min_splits: int = 0


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def gemm_shape(n: int, k: int, programs: int, gated: bool, max_elements: int = 16384,
               max_bk: int = 2048, fewest_steps: bool = False) -> tuple[int, int]:
    """``(rows, bk)`` of a GEMM stage with ``n`` output rows over ``k``: a K tile of up to
    ``max_bk`` that divides ``k`` when it can, then power-of-two rows within ``max_elements``
    weight elements per step (both tiles' when ``gated``): those that give the busiest program
    the fewest rows, the widest of those; or (``fewest_steps``) the fewest loop steps, each
    program's rows in one chunk when they fit (every step pays a DRAM round trip)."""
    bk = min(triton.next_power_of_2(k), max_bk)
    while bk > 128 and k % bk and k > bk and not fewest_steps:
        bk //= 2
    cap = max(_pow2_floor(max_elements // (bk * (2 if gated else 1))), 1)
    if fewest_steps:
        return min(cap, triton.next_power_of_2(triton.cdiv(n, programs))), bk
    best = None
    rows = 1
    while rows <= cap:
        busiest = triton.cdiv(triton.cdiv(n, rows), programs) * rows
        if best is None or busiest <= best[0]:
            best = (busiest, rows)
        rows *= 2
    return best[1], bk


def choose_config(hidden: int, intermediate: int, num_heads: int, num_kv_heads: int, head_dim: int,
                  num_sms: int, dtype: torch.dtype = torch.bfloat16, *, max_elements: int = 8192,
                  max_bk: int = 2048, fewest_steps: bool = True, programs_per_sm: int = 1,
                  num_warps: int = 4, pipeline: int = 1, balanced_elements: int = 0) -> DecodeLayerConfig:
    """``programs_per_sm`` programs per SM (all must be resident at once: the launch checks);
    key splits so that (KV heads x splits) about fills the SMs (at most 16, paged_attention's
    rule for a batch-1 decode graph); 64-key tiles (32 in float32); the GEMM stages' shapes
    from :func:`gemm_shape`, or (``balanced_elements`` > 0) balanced (:class:`DecodeLayerConfig`)
    where a program's whole share fits that many weight elements (both tiles' when gated). The defaults are the fastest of the sweep on an H200 with 4
    programs per SM (Qwen3-0.6B and Llama-3.2-1B chains, benchmarks/reports/
    persistent-decode-layer-2026-12-02-h200)."""
    programs = num_sms * programs_per_sm
    splits = splits_for(num_kv_heads, num_sms)
    q = num_heads * head_dim
    max_bk = max(max_bk, 4096) if fewest_steps else max_bk
    args = (max_elements, max_bk, fewest_steps)
    stages = [((num_heads + 2 * num_kv_heads) * head_dim, hidden, False), (hidden, q, False),
              (intermediate, hidden, True), (hidden, intermediate, False)]
    shapes, balanced = [], []
    for n, k, is_gated in stages:
        rows, bk = triton.next_power_of_2(triton.cdiv(n, programs)), triton.next_power_of_2(k)
        fits = rows * bk * (2 if is_gated else 1) <= balanced_elements
        shapes.append((rows, bk) if fits else gemm_shape(n, k, programs, is_gated, *args))
        balanced.append(fits)
    return DecodeLayerConfig(num_programs=programs, splits=splits, tile=32 if dtype == torch.float32 else 64,
                             rows=tuple(s[0] for s in shapes), bk=tuple(s[1] for s in shapes),
                             num_warps=num_warps, pipeline=pipeline, balanced=tuple(balanced))


def pair_sub(rows: int, bk: int, k: int, num_warps: int) -> int:
    """The sub-tile width (weights per row and middle index) of a GEMM stage's word tiles
    (:func:`_w_rows` with ``SUB``): as wide as lets the program's threads, 16-byte words per
    thread, cover the tile's ``rows`` once (each row's sum within as few threads as possible),
    within ``bk``; 0 (the bf16 tile) when ``k`` is odd or ``bk`` is below 8."""
    if k % 2 or bk < 8:
        return 0
    return min(bk, max(8, _pow2_floor(8 * 32 * num_warps // rows)))


def _env_int(name: str, default: int) -> int:
    """The integer in environment variable ``name``, or ``default`` when unset or empty."""
    value = os.environ.get(name)
    return default if value is None or value == "" else int(value)


def default_balanced_elements() -> int:
    """``balanced_elements`` of the configuration a launch picks for itself: 16,384 (W1 on an
    H200, Qwen3-0.6B at 2 programs per SM: 0.76 ms per token against 0.79 without, 3 runs
    each), or ``INFER_DECODE_BALANCED_ELEMENTS`` from the environment (0 turns it off; A/B
    measurements)."""
    return _env_int("INFER_DECODE_BALANCED_ELEMENTS", 16384)


def default_pairs() -> tuple[bool, bool, bool, bool]:
    """``pairs`` of the configuration a launch picks for itself: the config's default, or
    ``INFER_DECODE_PAIRS`` from the environment, four digits 0 / 1 for the qkv, o, gate/up and
    down stages (A/B measurements)."""
    value = os.environ.get("INFER_DECODE_PAIRS") or ""
    if not value:
        return DecodeLayerConfig.pairs
    if len(value) != 4 or set(value) - {"0", "1"}:
        raise ValueError(f"INFER_DECODE_PAIRS={value!r}: give four digits 0 or 1 (qkv, o, gate/up, down), "
                         "e.g. 0010")
    return tuple(c == "1" for c in value)


# layers of at least this many weight bytes run stage by stage by default, at these programs per SM
# (qkv, attention, merge, o, gate/up, down): see stage_programs_per_sm
STAGED_LAYER_BYTES = 64 << 20
STAGED_PROGRAMS_PER_SM = (4, 1, 1, 4, 4, 4)


def stage_programs_per_sm(layer_bytes: int = 0) -> tuple[int, ...]:
    """The programs per SM of each stage's launch when a model's batch-1 decode steps run stage
    by stage on CUDA (each stage its own launch, PDL between them, no grid barrier), or ``()``
    for one launch per layer. By default, stage by stage at :data:`STAGED_PROGRAMS_PER_SM` for
    layers of at least :data:`STAGED_LAYER_BYTES` weight bytes (``layer_bytes``), else one launch.
    Measured on an H200, W1 (medians of 3): Llama-3.2-1B (122 MB per layer) 0.81 ms per token
    against 0.84 with one launch (0.82 at 4 per SM in every stage); Qwen3-0.6B (31 MB) 0.69 at 2
    per SM or 2,1,1,4,4,4 and 0.71 at 4 against 0.68. The stages' GEMMs take 4 programs per SM,
    which the one launch (attention's registers) cannot
    (benchmarks/reports/decode-layer-stages-w1-mergeo-2026-12-03-h200). ``INFER_DECODE_STAGES``
    overrides it: one count for all six stages (``2``), six (``2,1,1,4,4,4`` for qkv, attention,
    merge, o, gate/up, down), or 0 (one launch per layer)."""
    value = (os.environ.get("INFER_DECODE_STAGES") or "").strip()
    if value == "":
        return STAGED_PROGRAMS_PER_SM if layer_bytes >= STAGED_LAYER_BYTES else ()
    if value == "0":
        return ()
    try:
        counts = tuple(int(part) for part in value.split(","))
    except ValueError:
        counts = ()
    if len(counts) == 1:
        counts *= 6
    if len(counts) != 6 or min(counts) < 1:
        raise ValueError(f"INFER_DECODE_STAGES={value!r}: give programs per SM for all stages (e.g. 2) or for each "
                         "of the six (e.g. 2,1,1,4,4,4), or 0 for one launch per layer")
    return counts


def layer_bytes(weights: DecodeLayerWeights) -> int:
    """The bytes of a layer's four projections (what a decode step reads of it, the norms aside)."""
    return sum(t.numel() * t.element_size() for t in (weights.qkv, weights.o, weights.gate_up, weights.down))


def launch_config(hidden: int, inter: int, hq: int, hkv: int, d: int, sms: int, dtype: torch.dtype,
                  programs_per_sm: int, stage_by_stage: bool = False) -> DecodeLayerConfig:
    """The configuration a launch without ``config`` takes at that many programs per SM:
    :func:`choose_config` with the balanced stages, then the defaults the environment may
    override (``kv_early``, ``pairs``, ``norm_once``, ``rope_early``, ``group_sync`` only with at
    most one program per qkv row, ``kv_ahead``, ``min_splits``)."""
    cfg = choose_config(hidden, inter, hq, hkv, d, sms, dtype, programs_per_sm=programs_per_sm,
                        balanced_elements=default_balanced_elements())
    group_sync = default_group_sync() if cfg.num_programs <= (hq + 2 * hkv) * d else 0
    return replace(cfg, kv_early=default_kv_early(), pairs=default_pairs(),
                   norm_once=default_norm_once(stage_by_stage), rope_early=default_rope_early(),
                   group_sync=group_sync,
                   kv_ahead=bool(_env_int("INFER_DECODE_KV_AHEAD", int(DecodeLayerConfig.kv_ahead))),
                   min_splits=_env_int("INFER_DECODE_MIN_SPLITS", DecodeLayerConfig.min_splits))


def default_kv_early() -> int:
    """``kv_early`` of the configuration a launch picks for itself: the config's default, 2
    (Qwen3-0.6B chain on an H200: 22.1 µs per layer against 22.7 with 1; W1 0.74 ms per token
    against 0.75), or ``INFER_DECODE_KV_EARLY`` from the environment (A/B measurements)."""
    return _env_int("INFER_DECODE_KV_EARLY", DecodeLayerConfig.kv_early)


def default_norm_once(stage_by_stage: bool = False) -> bool:
    """``norm_once`` of the configuration a launch picks for itself: on for the one-launch layer
    (the config's default; W1 Qwen3-0.6B on an H200 0.668 against 0.676 ms per token), off for
    stage-by-stage launches (Llama-3.2-1B's default: chain 42.0 µs per layer either way, W1
    0.814 against 0.808 and 0.82 against 0.81 in two calls;
    benchmarks/reports/norm-once-2026-12-04-h200); ``INFER_DECODE_NORM_ONCE`` (0 / 1) overrides
    both (A/B measurements)."""
    return bool(_env_int("INFER_DECODE_NORM_ONCE", int(DecodeLayerConfig.norm_once and not stage_by_stage)))


def default_group_sync() -> int:
    """``group_sync`` of the configuration a launch picks for itself: 2 (W1 Qwen3-0.6B on an
    H200, medians of 3: 0.6545 and 0.653 ms per token against 0.666 and 0.665 with barriers 0
    and 1; 1: 0.658; chain 19.6 against 20.1 µs per layer;
    benchmarks/reports/group-sync-2026-12-04-h200), or ``INFER_DECODE_GROUP_SYNC`` (0 / 1 / 2)
    from the environment (A/B measurements)."""
    return _env_int("INFER_DECODE_GROUP_SYNC", 2)


def default_rope_early() -> int:
    """``rope_early`` of the configuration a launch picks for itself: the config's default, or
    ``INFER_DECODE_ROPE_EARLY`` (0 / 1 / 2) from the environment (A/B measurements)."""
    return _env_int("INFER_DECODE_ROPE_EARLY", DecodeLayerConfig.rope_early)


def splits_for(num_kv_heads: int, num_sms: int) -> int:
    """Key splits per KV head: (KV heads x splits) about fills the SMs, at most 16; or
    ``INFER_DECODE_SPLITS`` from the environment (A/B measurements)."""
    splits = _env_int("INFER_DECODE_SPLITS", max(min(_pow2_floor(num_sms // num_kv_heads), 16), 1))
    if splits < 1 or splits & (splits - 1):
        raise ValueError(f"INFER_DECODE_SPLITS={splits}: give a power of two (1, 2, 4, 8 or 16)")
    return splits


def supports(layer: AttentionLayer, kv_cache: torch.Tensor, dtype: torch.dtype) -> str | None:
    """``None`` when the kernel computes this layer's decode step, else why not."""
    half = layer.head_dim // 2
    if layer.head_dim % 2 or half & (half - 1) or half < 16:
        return f"head_dim {layer.head_dim} (its half must be a power of two, at least 16)"
    if layer.num_heads % layer.num_kv_heads or layer.num_heads // layer.num_kv_heads > 16:
        return f"{layer.num_heads} query heads over {layer.num_kv_heads} KV heads"
    if layer.sliding_window or layer.logit_softcap:
        return "a sliding window or a logit softcap"
    if kv_cache.dtype != dtype:
        return f"a {kv_cache.dtype} KV cache with {dtype} activations"
    return None


class DecodeWorkspace:
    """The launches' scratch (shared by every layer of a step: the launches are ordered), the
    barrier counters (never reset: see the module's docstring) and the error flag (set if a
    barrier timed out). Every one-launch layer on one workspace must run with the same
    ``group_sync`` (with it, some barriers' counters do not count). ``splits`` must be the
    launches' (:func:`splits_for` the device's SMs by default)."""

    def __init__(self, hidden: int, intermediate: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 splits: int | None, dtype: torch.dtype, device: torch.device | str) -> None:
        if splits is None:
            splits = splits_for(num_kv_heads, num_sms(torch.device(device)))

        def empty(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
            return torch.empty(*shape, dtype=dt, device=device)

        self.splits = splits
        self.qkv = empty((num_heads + 2 * num_kv_heads) * head_dim)
        self.part_acc = empty(num_heads * splits * head_dim, dt=torch.float32)
        self.part_max = empty(num_heads * splits, dt=torch.float32)
        self.part_sum = empty(num_heads * splits, dt=torch.float32)
        self.attn = empty(num_heads * head_dim)
        self.o = empty(hidden)
        self.act = empty(intermediate)
        # the barriers' (and the epoch's) counters, then two per KV group (group_sync)
        self.counters = torch.zeros(8 + 2 * num_kv_heads, dtype=torch.int32, device=device)
        self.error = torch.zeros(1, dtype=torch.int32, device=device)
        self.kind: int | None = None  # the group_sync the one-launch layers run with, once one ran
        # launch configuration -> (programs that fit at once, registers, shared memory), once compiled
        self.resident: dict = {}
        # a launch's shape -> the configuration decode_layer chose for it (config=None); (shape, "stages") -> the
        # six of stage by stage on CUDA
        self.chosen: dict = {}


def decode_layer(
    x: torch.Tensor, residual: torch.Tensor | None, weights: DecodeLayerWeights, layer: AttentionLayer,
    kv_cache: torch.Tensor, metadata: AttentionMetadata, positions: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, workspace: DecodeWorkspace, *,
    config: DecodeLayerConfig | None = None, stage_by_stage: bool = False, timeline: torch.Tensor | None = None,
    stage_configs: Sequence[DecodeLayerConfig] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of one layer for one token: ``x``, ``residual [1, H]`` (``None`` for
    the first layer) → ``(mlp_out, new_residual)``, the step's K/V stored into ``kv_cache``
    (``[2, blocks, block_size, Hkv, D]``) at ``metadata.slot_mapping[0]``; ``cos``/``sin
    [positions, D/2]``. ``stage_by_stage`` launches each stage on its own (the interpreter; on
    CUDA with PDL between the launches); ``stage_configs`` (six, stage by stage only) gives each
    stage's launch its own configuration (program count, tiles): no grid barrier ties the
    stages to one. Without them, on CUDA, stage by stage takes :func:`stage_programs_per_sm`.
    ``timeline`` (benchmarks, CUDA): an int64 ``[programs, TIMELINE_SLOTS]`` tensor that
    receives each program's clock at the stage boundaries (:func:`_stamp`)."""
    hidden = x.shape[-1]
    inter = weights.down.shape[1]
    hq, hkv, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
    assert x.shape == (1, hidden) and weights.qkv.shape == ((hq + 2 * hkv) * d, hidden), (x.shape, weights.qkv.shape)
    assert weights.o.shape == (hidden, hq * d) and weights.gate_up.shape == (2 * inter, hidden)
    reason = supports(layer, kv_cache, x.dtype)
    assert reason is None, reason
    assert kv_cache.is_contiguous() and kv_cache.shape[3:] == (hkv, d), kv_cache.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x)
    qk_norm = weights.q_norm is not None
    pdl = use_pdl(x)  # (stage by stage too: each stage's launch waits for the one before)
    ws = workspace
    has_residual = residual is not None
    r = residual if residual is not None else x  # (unread without a residual)

    ks = (hidden, hq * d, hidden, inter)  # each GEMM stage's K

    def launch_args(cfg: DecodeLayerConfig, stage: int) -> tuple[tuple, dict]:
        pairs = x.dtype == torch.bfloat16
        qn, kn = (weights.q_norm, weights.k_norm) if qk_norm else (weights.input_norm, weights.input_norm)  # (unread)
        args = (
            x, r, out, res_out, weights.qkv, weights.o, weights.gate_up, weights.down, weights.input_norm,
            weights.post_norm, qn, kn, weights.eps,
            cos, sin, positions, kv_cache, metadata.block_tables, metadata.seq_lens, metadata.slot_mapping,
            kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), cos.stride(0), sin.stride(0),
            layer.scale * LOG2E, ws.qkv, ws.part_acc, ws.part_max, ws.part_sum,
            ws.attn, ws.o, ws.act, ws.counters, ws.error,
            timeline if timeline is not None else ws.counters, cfg.num_programs,
        )
        kwargs = dict(
            HIDDEN=hidden, INTER=inter, HQ=hq, HKV=hkv, HEAD_DIM=d, SPLITS=cfg.splits,
            BLOCK_M=max(16, triton.next_power_of_2(hq // hkv)), TILE=cfg.tile, BLOCK_SIZE=metadata.block_size,
            QK_NORM=qk_norm, HAS_RESIDUAL=has_residual,
            ROWS_QKV=cfg.rows[0], BK_QKV=cfg.bk[0], ROWS_O=cfg.rows[1], BK_O=cfg.bk[1],
            ROWS_GU=cfg.rows[2], BK_GU=cfg.bk[2], ROWS_DOWN=cfg.rows[3], BK_DOWN=cfg.bk[3],
            BAL_QKV=cfg.balanced[0], BAL_O=cfg.balanced[1], BAL_GU=cfg.balanced[2], BAL_DOWN=cfg.balanced[3],
            **{f"SUB_{name}": pair_sub(cfg.rows[i], cfg.bk[i], ks[i], cfg.num_warps) if pairs and cfg.pairs[i] else 0
               for i, name in enumerate(("QKV", "O", "GU", "DOWN"))},
            STAGE=stage, LAST=cfg.last_stage, PREFETCH=cfg.prefetch, PIPE=cfg.pipeline,
            PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            PDL=pdl, POLL_SLEEP=cfg.poll_sleep if x.is_cuda else 0, TIMELINE=timeline is not None,
            ARRIVE_FIRST=cfg.arrive_first, KV_EARLY=cfg.kv_early, NORM_ONCE=cfg.norm_once, ROPE_EARLY=cfg.rope_early,
            GROUP_SYNC=cfg.group_sync, KV_AHEAD=cfg.kv_ahead and x.is_cuda, MIN_SPLITS=cfg.min_splits,
            num_warps=cfg.num_warps, num_stages=1, launch_pdl=pdl,
        )
        return args, kwargs

    shape = (hidden, inter, hq, hkv, d, x.dtype, x.device, qk_norm, has_residual, metadata.block_size, pdl)
    if config is not None:
        cfg = config
    elif not x.is_cuda:
        cfg = choose_config(hidden, inter, hq, hkv, d, num_sms(x.device), x.dtype)
    elif stage_by_stage:  # (no grid barrier: the programs need not all be resident at once)
        if stage_configs is None:  # chosen once per launch shape (programs per SM and tiles of each stage)
            if (shape, "stages") not in ws.chosen:
                per_sm = stage_programs_per_sm(layer_bytes(weights)) or (2,) * 6
                ws.chosen[shape, "stages"] = [launch_config(hidden, inter, hq, hkv, d, num_sms(x.device), x.dtype, n,
                                                            stage_by_stage=True)
                                              for n in per_sm]
            stage_configs = ws.chosen[shape, "stages"]
        cfg = stage_configs[0]
    elif shape not in ws.chosen:  # the most programs per SM that fit, found once per launch shape
        for per_sm in (4, 2, 1):
            cfg = launch_config(hidden, inter, hq, hkv, d, num_sms(x.device), x.dtype, per_sm)
            if per_sm == 1 or _fits(ws, cfg, x.device, *launch_args(cfg, -1)):
                break
        ws.chosen[shape] = cfg
    else:
        cfg = ws.chosen[shape]
    if stage_configs is not None and (not stage_by_stage or len(stage_configs) != 6):
        raise ValueError("stage_configs: give six configurations (stages 1-6), with stage_by_stage=True")
    assert all(c.splits == workspace.splits for c in [cfg, *(stage_configs or [])]), workspace.splits
    stamps = (cfg.num_programs, TIMELINE_SLOTS.value)
    if timeline is not None and (not x.is_cuda or timeline.dtype != torch.int64 or timeline.shape != stamps):
        raise ValueError(f"timeline must be an int64 CUDA tensor of shape {list(stamps)} (programs x stamps)")
    for c in [cfg, *(stage_configs or [])]:
        if c.min_splits < 0 or c.min_splits & (c.min_splits - 1):
            raise ValueError(f"DecodeLayerConfig(min_splits={c.min_splits}): give 0 (every step uses all "
                             f"{c.splits} splits) or a power of two")
    if cfg.group_sync and cfg.num_programs > (hq + 2 * hkv) * d:
        raise ValueError(f"DecodeLayerConfig(group_sync=True) needs at most one program per qkv row "
                         f"({(hq + 2 * hkv) * d}), got {cfg.num_programs} programs")
    if not stage_by_stage:  # the counters' meaning differs: one workspace, one kind of launch
        kind = cfg.group_sync if cfg.balanced[0] else 0  # (the group_sync in effect)
        if ws.kind is None:
            ws.kind = kind
        elif ws.kind != kind:
            raise ValueError(f"this decode workspace's launches ran with group_sync {ws.kind}: a launch with "
                             f"{kind} would misread its barrier counters (use another workspace)")
    for stage in (range(1, 7) if stage_by_stage else (-1,)):
        stage_cfg = stage_configs[stage - 1] if stage_configs is not None else cfg
        args, kwargs = launch_args(stage_cfg, stage)
        if stage < 0 and x.is_cuda:
            _check_resident(ws, cfg, x.device, args, kwargs)
        _decode_layer_kernel[(stage_cfg.num_programs,)](*args, **kwargs)
    return out, res_out


def resident_programs(n_regs: int, shared: int, num_warps: int, device: torch.device) -> int:
    """How many programs of a compiled kernel fit on the device at once (threads, registers,
    shared memory per SM)."""
    props = torch.cuda.get_device_properties(device)
    threads = 32 * num_warps
    by_threads = props.max_threads_per_multi_processor // threads
    regs_per_warp = -(-max(n_regs, 1) * 32 // 256) * 256  # allocated per warp in units of 256
    by_regs = props.regs_per_multiprocessor // (regs_per_warp * num_warps)
    smem = getattr(props, "shared_memory_per_multiprocessor", 233472)
    by_smem = smem // (shared + 1024) if shared else 32
    return max(min(by_threads, by_regs, by_smem, 32), 0) * props.multi_processor_count


def _residency(workspace: DecodeWorkspace, cfg: DecodeLayerConfig, device: torch.device, args: tuple,
               kwargs: dict) -> tuple[int, int | None, int]:
    """``(programs that fit at once, registers per thread, shared memory)`` of this launch:
    compiled once per configuration, registers / shared memory / threads counted."""
    key = (cfg, tuple(sorted((k, v) for k, v in kwargs.items() if isinstance(v, (int, bool, str)))))
    if key not in workspace.resident:
        compiled = _decode_layer_kernel.warmup(*args, grid=(cfg.num_programs,), **kwargs)
        init = getattr(compiled, "_init_handles", None)  # Triton loads the binary (and counts) lazily
        if init is not None:
            init()
        regs, shared = getattr(compiled, "n_regs", None), compiled.metadata.shared
        if regs is None:  # a Triton that does not say: only one program per SM is safe
            fits = num_sms(device)
        else:
            fits = resident_programs(regs, shared, cfg.num_warps, device)
        workspace.resident[key] = (fits, regs, shared)
    return workspace.resident[key]


def _fits(workspace: DecodeWorkspace, cfg: DecodeLayerConfig, device: torch.device, args: tuple,
          kwargs: dict) -> bool:
    """Whether every program of this launch can be resident at once (else its barriers would
    never open)."""
    return cfg.num_programs <= _residency(workspace, cfg, device, args, kwargs)[0]


def _check_resident(workspace: DecodeWorkspace, cfg: DecodeLayerConfig, device: torch.device, args: tuple,
                    kwargs: dict) -> None:
    """Refuse a launch whose programs could not all be resident at once."""
    fits, regs, shared = _residency(workspace, cfg, device, args, kwargs)
    if cfg.num_programs > fits:
        raise ValueError(f"the decode-layer launch has {cfg.num_programs} programs but only {fits} fit on "
                         f"{torch.cuda.get_device_name(device)} at once ({regs} registers per thread, "
                         f"{shared} bytes of shared memory): use fewer programs per SM")


def decode_layer_ref(
    x: torch.Tensor, residual: torch.Tensor | None, weights: DecodeLayerWeights, layer: AttentionLayer,
    kv_cache: torch.Tensor, metadata: AttentionMetadata, positions: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference: the separate references in the unfused path's order and roundings
    (``kv_cache`` written in place)."""
    dtype = x.dtype
    hq, hkv, d = layer.num_heads, layer.num_kv_heads, layer.head_dim

    def linear(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (a.float() @ w.float().T).to(dtype)

    h1 = x if residual is None else x + residual
    qkv = linear(rms_norm_ref(h1, weights.input_norm, weights.eps), weights.qkv)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q, k, v = q.reshape(1, hq, d), k.reshape(1, hkv, d), v.reshape(1, hkv, d)
    if weights.q_norm is not None:
        q, k = rms_norm_ref(q, weights.q_norm, weights.eps), rms_norm_ref(k, weights.k_norm, weights.eps)
    rotary_embedding_ref(positions, q, k, cos, sin)
    write_kv_ref(kv_cache, k, v, metadata.slot_mapping)
    attn = paged_attention_ref(layer, q, kv_cache, metadata).reshape(1, hq * d)
    h2 = linear(attn, weights.o) + h1
    gate_up = linear(rms_norm_ref(h2, weights.post_norm, weights.eps), weights.gate_up)
    return linear(silu_and_mul_ref(gate_up), weights.down), h2
