"""Unified paged attention over the flat batch: prefill chunks and decodes in one launch.

Each program takes ``BLOCK_Q`` consecutive query tokens of one request and every query head
of one KV head (GQA: the ``BLOCK_Q * group`` rows share each K/V tile, which is read once),
so the K/V of a tile feed one ``[BLOCK_M, D] x [D, TILE]`` product. Keys are walked in tiles
of ``TILE`` positions, each position mapped to its cache slot through the request's block
table: any block size works, from 1 to the contiguous cache's single block of
``max_model_len``. Softmax is online (running max and sum, base 2 with the scale folded into
``log2 e``). Queries are causal within the request and see the cached context before them;
with a sliding window, tiles wholly outside the window are never read. Tiles that every row
sees in full skip the masking arithmetic.

Programs find their request by binary search over ``query_start_loc`` (request ``i`` owns
program slots ``[qsl[i] // BLOCK_Q + i, qsl[i+1] // BLOCK_Q + i + 1)``), so the grid depends
only on ``T`` and the number of requests: no host-side work per step, and a step can be
captured in a CUDA graph. A decode-only step (one query token per request) skips the search:
program ``i`` is request ``i`` (the search is a chain of dependent loads, ~8 at batch 256). Long decodes with too few programs to fill the GPU are split along
the keys (``num_splits`` programs per block); :mod:`~infer_core.kernels.attention_reduce` merges the splits.

FP8 (e4m3) caches are read as FP8 and widened to the query dtype in registers; ``k_scale`` is
folded into the softmax scale and ``v_scale`` into the output.

The reference, ``paged_attention_ref``, is the torch backend's
:func:`infer_core.attention.torch.paged_attention_ref` with ``fp32_values=True``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from infer_core.attention.backend import AttentionLayer
from infer_core.attention.metadata import AttentionMetadata
from infer_core.attention.torch import paged_attention_ref as torch_paged_attention_ref
from infer_core.kernels.attention_reduce import attention_reduce
from infer_core.kernels.device import num_sms
from infer_core.kernels.pdl import use_pdl, wait_for_prior

LOG2E = 1.4426950408889634


@triton.jit
def _find_request(query_start_loc_ptr, q_block, num_reqs, BLOCK_Q: tl.constexpr):
    lo: tl.int32 = 0
    hi = num_reqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))  # never overflows
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def online_softmax_step(acc, m_i, l_i, s, v, PRECISION: tl.constexpr):
    """One key tile of the online softmax: scores ``s [M, TILE]`` (log2 units, masked keys at
    ``-inf``) and values ``v [TILE, D]`` into the running ``acc``, maximum ``m_i`` and sum
    ``l_i``; the probabilities are rounded to ``v``'s dtype for the product. Shared with
    :mod:`~infer_core.kernels.decode_layer`."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attend_tile(
    acc, m_i, l_i, q, tile, cache_ptr, table_ptr, q_pos, kv_end, dims, qk_scale, softcap, window,
    stride_kv, stride_block, stride_slot,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, TILE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr,
):
    keys = tile * TILE + tl.arange(0, TILE)
    if MASKED:
        key_ok = keys < kv_end
        block = tl.load(table_ptr + keys // BLOCK_SIZE, mask=key_ok, other=0)
    else:
        block = tl.load(table_ptr + keys // BLOCK_SIZE)
    slot = block.to(tl.int64) * stride_block + (keys % BLOCK_SIZE).to(tl.int64) * stride_slot
    k_ptrs = cache_ptr + slot[None, :] + dims[:, None]  # [BLOCK_D, TILE]: K transposed
    v_ptrs = cache_ptr + stride_kv + slot[:, None] + dims[None, :]  # [TILE, BLOCK_D]
    if MASKED:
        if BLOCK_D == HEAD_DIM:
            k = tl.load(k_ptrs, mask=key_ok[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs, mask=key_ok[None, :] & (dims[:, None] < HEAD_DIM), other=0.0)
            v = tl.load(v_ptrs, mask=key_ok[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            k = tl.load(k_ptrs, mask=dims[:, None] < HEAD_DIM, other=0.0)
            v = tl.load(v_ptrs, mask=dims[None, :] < HEAD_DIM, other=0.0)
    k = k.to(q.dtype)
    v = v.to(q.dtype)
    s = tl.dot(q, k, input_precision=PRECISION)
    if SOFTCAP:
        s = _tanh(s * (qk_scale / softcap)) * (softcap * 1.4426950408889634)
    else:
        s = s * qk_scale
    if MASKED:
        visible = (keys[None, :] <= q_pos[:, None]) & key_ok[None, :]
        if HAS_WINDOW:
            visible = visible & (q_pos[:, None] - keys[None, :] < window)
        s = tl.where(visible, s, float("-inf"))
    return online_softmax_step(acc, m_i, l_i, s, v, PRECISION)


# Arguments that change from step to step are not specialized on (Triton would otherwise
# compile a variant per "== 1" / "divisible by 16" pattern of them, in the middle of serving).
@triton.jit(do_not_specialize=["num_reqs", "num_splits", "stride_bt"])
def _paged_attention_kernel(
    out_ptr, q_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, scales_ptr,
    part_acc_ptr, part_max_ptr, part_sum_ptr,
    num_reqs, num_heads, sm_scale, softcap, window, num_splits,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_bt,
    stride_kv, stride_block, stride_slot, stride_head,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, TILE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, FP8: tl.constexpr, SPLIT: tl.constexpr,
    DECODE: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:
        wait_for_prior()
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    if DECODE:  # one query token per request: program i is request i, no search
        req = q_block
        q_start = tl.load(query_start_loc_ptr + req)
        q_len = 1
        first = 0
    else:
        req = _find_request(query_start_loc_ptr, q_block, num_reqs, BLOCK_Q)
        q_start = tl.load(query_start_loc_ptr + req)
        q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
        first = (q_block - (q_start // BLOCK_Q + req)) * BLOCK_Q  # first query token of this block
        if first >= q_len:
            return
    seq_len = tl.load(seq_lens_ptr + req)
    context = seq_len - q_len

    rows = tl.arange(0, BLOCK_M)
    tok = first + rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_ok = (tok < q_len) & (rows < BLOCK_Q * GROUP)
    q_pos = context + tok
    dims = tl.arange(0, BLOCK_D)
    q_rows = (q_start + tok).to(tl.int64)
    q_mask = row_ok[:, None] & (dims[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
                mask=q_mask, other=0.0)

    lo_pos = context + first  # smallest and largest query position of the block
    hi_pos = context + tl.minimum(first + BLOCK_Q, q_len) - 1
    kv_end = hi_pos + 1
    tile_lo = 0
    full_lo = 0  # tiles in [full_lo, full_hi) are visible in full to every row
    if HAS_WINDOW:
        tile_lo = tl.maximum(lo_pos - window + 1, 0) // TILE
        full_lo = tl.maximum(tl.cdiv(hi_pos - window + 1, TILE), 0)
    full_hi = (lo_pos + 1) // TILE
    tile_hi = tl.cdiv(kv_end, TILE)
    if SPLIT:
        per_split = tl.cdiv(tile_hi - tile_lo, num_splits)
        t0 = tl.minimum(tile_lo + split * per_split, tile_hi)
        t1 = tl.minimum(t0 + per_split, tile_hi)
    else:
        t0 = tile_lo
        t1 = tile_hi
    mid_lo = tl.minimum(tl.maximum(full_lo, t0), t1)
    mid_hi = tl.minimum(tl.maximum(full_hi, mid_lo), t1)

    qk_scale = sm_scale
    if FP8:
        qk_scale = qk_scale * tl.load(scales_ptr)
    if not SOFTCAP:
        qk_scale = qk_scale * 1.4426950408889634
    table_ptr = block_tables_ptr + req.to(tl.int64) * stride_bt
    head_ptr = cache_ptr + kv_head * stride_head
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for tile in range(t0, mid_lo):
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, tile, head_ptr, table_ptr, q_pos, kv_end, dims, qk_scale, softcap, window,
            stride_kv, stride_block, stride_slot,
            HEAD_DIM, BLOCK_D, TILE, BLOCK_SIZE, HAS_WINDOW, SOFTCAP, True, PRECISION)
    for tile in range(mid_lo, mid_hi):
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, tile, head_ptr, table_ptr, q_pos, kv_end, dims, qk_scale, softcap, window,
            stride_kv, stride_block, stride_slot,
            HEAD_DIM, BLOCK_D, TILE, BLOCK_SIZE, HAS_WINDOW, SOFTCAP, False, PRECISION)
    for tile in range(mid_hi, t1):
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, tile, head_ptr, table_ptr, q_pos, kv_end, dims, qk_scale, softcap, window,
            stride_kv, stride_block, stride_slot,
            HEAD_DIM, BLOCK_D, TILE, BLOCK_SIZE, HAS_WINDOW, SOFTCAP, True, PRECISION)

    if FP8:
        acc = acc * tl.load(scales_ptr + 1)
    if not SPLIT:
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # padding rows have l = 0
        tl.store(out_ptr + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=q_mask)
    else:
        part = (q_rows * num_heads + head) * num_splits + split
        tl.store(part_acc_ptr + part[:, None] * BLOCK_D + dims[None, :], acc, mask=row_ok[:, None])
        tl.store(part_max_ptr + part, m_i, mask=row_ok)
        tl.store(part_sum_ptr + part, l_i, mask=row_ok)


@dataclass(frozen=True)
class LaunchConfig:
    """Tile shapes of one launch: ``block_m`` query rows (tokens x grouped heads) against
    ``tile`` keys per step; ``num_splits`` > 1 splits the keys (then a reduction runs)."""

    block_m: int
    tile: int
    num_warps: int
    num_stages: int
    num_splits: int = 1


def choose_config(
    layer: AttentionLayer,
    metadata: AttentionMetadata,
    device: torch.device,
    dtype: torch.dtype,
    kv_dtype: torch.dtype | None = None,
) -> LaunchConfig:
    """Launch shapes measured on an H200 (see docs/kernels.md).

    Decode-only steps: 16-row blocks (a token's query-head group), 64-key tiles (128 for head
    dim 256 and for FP8 caches, whose rows are half as wide), split along the keys when fewer
    than two programs per multiprocessor would run. Other steps: 128-row blocks against
    64-key tiles, 8 warps. float32 halves the tiles."""
    group = layer.num_heads // layer.num_kv_heads
    if metadata.max_query_len == 1:
        block_m = max(16, triton.next_power_of_2(group))
        if dtype == torch.float32:
            tile = 32
        elif layer.head_dim > 128 or kv_dtype == torch.float8_e4m3fn:
            tile = 128
        else:
            tile = 64
        programs = metadata.num_requests * layer.num_kv_heads
        sms = num_sms(device)
        splits = 1
        if programs < 2 * sms:
            tiles = triton.cdiv(metadata.max_seq_len, tile)
            want = min(triton.cdiv(2 * sms, programs), tiles // 4, 16)
            splits = triton.next_power_of_2(want) if want > 1 else 1
        return LaunchConfig(block_m, tile, num_warps=4, num_stages=2, num_splits=splits)
    if dtype == torch.float32:
        return LaunchConfig(max(64, triton.next_power_of_2(group)), tile=32, num_warps=4, num_stages=2)
    return LaunchConfig(max(128, triton.next_power_of_2(group)), tile=64, num_warps=8, num_stages=3)


def paged_attention(
    layer: AttentionLayer,
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
    kv_scales: torch.Tensor | None = None,
    *,
    config: LaunchConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of the step's queries ``q [T, Hq, D]`` over ``kv_cache`` (already holding
    this step's keys and values); returns ``[T, Hq, D]`` in ``q``'s dtype."""
    tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, cache_dim = kv_cache.shape
    assert num_heads == layer.num_heads and num_kv_heads == layer.num_kv_heads, (q.shape, kv_cache.shape)
    assert head_dim == cache_dim == layer.head_dim and q.stride(-1) == 1 and kv_cache.is_contiguous()
    assert block_size == metadata.block_size, (block_size, metadata.block_size)
    fp8 = kv_cache.dtype == torch.float8_e4m3fn
    assert not fp8 or (kv_scales is not None and kv_scales.numel() == 2), "fp8 KV needs kv_scales"
    assert fp8 or kv_cache.dtype == q.dtype, (kv_cache.dtype, q.dtype)
    out = torch.empty(tokens, num_heads, head_dim, dtype=q.dtype, device=q.device) if out is None else out
    if tokens == 0:
        return out
    cfg = config or choose_config(layer, metadata, q.device, q.dtype, kv_cache.dtype)
    group = num_heads // num_kv_heads
    block_q = max(cfg.block_m // group, 1)
    block_m = max(cfg.block_m, triton.next_power_of_2(group))
    block_d = max(16, triton.next_power_of_2(head_dim))
    splits = cfg.num_splits
    num_reqs = metadata.num_requests
    if splits > 1:
        part_acc = torch.empty(tokens, num_heads, splits, block_d, dtype=torch.float32, device=q.device)
        part_max = torch.empty(tokens, num_heads, splits, dtype=torch.float32, device=q.device)
        part_sum = torch.empty(tokens, num_heads, splits, dtype=torch.float32, device=q.device)
    else:
        part_acc = part_max = part_sum = out
    window = layer.sliding_window or 0
    softcap = layer.logit_softcap or 0.0
    tables = metadata.block_tables
    decode = metadata.max_query_len == 1 and tokens == num_reqs
    grid = (num_reqs if decode else tokens // block_q + num_reqs, num_kv_heads, splits)
    pdl = use_pdl(q)
    _paged_attention_kernel[grid](
        out, q, kv_cache, tables, metadata.seq_lens, metadata.query_start_loc,
        kv_scales if fp8 else metadata.seq_lens,
        part_acc, part_max, part_sum,
        num_reqs, num_heads, layer.scale, softcap, window, splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), tables.stride(0),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_Q=block_q,
        TILE=cfg.tile, BLOCK_SIZE=block_size, HAS_WINDOW=window > 0, SOFTCAP=softcap > 0, FP8=fp8,
        SPLIT=splits > 1, DECODE=decode, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", PDL=pdl,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl,
    )
    if splits > 1:
        attention_reduce(out, part_acc, part_max, part_sum)
    return out


# The oracle of the kernel tests: the torch backend's attention with float32 probabilities and
# values (the kernel accumulates in float32 and rounds once); an FP8 cache is dequantized first.
paged_attention_ref = functools.partial(torch_paged_attention_ref, fp32_values=True)
