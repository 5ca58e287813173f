"""The persistent decode layer's attention stages: per (KV head, key split) QK-norm and RoPE of
the head's query group, the step's K/V store and split attention over the paged cache
(paged_attention's tile size and split rule); per query head the split-KV merge."""

from __future__ import annotations

import triton
import triton.language as tl

from infer_core.kernels.attention_reduce import merge_splits
from infer_core.kernels.decode_layer.timeline import _stamp, _stamp_after
from infer_core.kernels.paged_attention import online_softmax_step
from infer_core.kernels.qk_norm_rope import norm_rope


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
