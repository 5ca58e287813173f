"""The persistent decode layer's GEMM stages (qkv, o_proj, gate/up, down): weight tiles
(plain or bf16 pairs), the RMSNorm prologues of the norm stages and the products.

A stage splits its weight rows into chunks of ``ROWS`` rows, program ``p`` taking chunks ``p,
p + P, ...`` and walking each in ``BK``-wide K tiles; or (a balanced stage) each program takes
one contiguous share of the rows in one tile (:func:`_share`). Each stage's first tile is
requested before the barrier that precedes the stage (weights never depend on the step)."""

from __future__ import annotations

import triton
import triton.language as tl

from infer_core.kernels.act_and_mul import gated
from infer_core.kernels.rms_norm import add_residual, inv_rms, normed


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
