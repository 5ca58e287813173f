"""The persistent decode layer's kernel: the six stages in one launch with grid barriers
between them, or one stage per launch (``STAGE``, stage by stage)."""

from __future__ import annotations

import triton
import triton.language as tl

from infer_core.kernels.decode_layer.attention import (
    _active_splits,
    _attention_item,
    _early_rope_inputs,
    _first_kv,
    _kv_ahead,
    _merge_head,
    _step_metadata,
)
from infer_core.kernels.decode_layer.gemm import (
    _first_tiles,
    _gemm_stage,
    _norm_stage_input,
    _norm_words,
)
from infer_core.kernels.decode_layer.sync import (
    EPOCH_SLOT,
    GROUP_SLOT,
    _arrive,
    _grid_barrier,
    _group_arrive,
    _group_target,
    _target,
    _wait,
)
from infer_core.kernels.decode_layer.timeline import _stamp, _stamp_after
from infer_core.kernels.pdl import wait_for_prior


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
        if not ATTN:  # (stage by stage: this launch has not read the step's length; SPLITS without min_splits)
            active = _active_splits(tl.load(seq_lens_ptr), TILE, SPLITS, MIN_SPLITS)
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
