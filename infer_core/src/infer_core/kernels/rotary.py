"""Rotary position embeddings applied in place to ``q [T, Hq, D]`` and ``k [T, Hkv, D]``.

Each token reads its own position from ``positions [T]`` (so prefill chunks, decodes and
mixed batches are all one launch) and its row of the layer's ``cos``/``sin`` tables
``[max_positions, D/2]``. The tables carry the frequencies (default, linear, ``llama3``
scaled, or a per-layer base such as Gemma 3's local layers): one kernel serves them all.
Pairs are half-split (``rotate_half``): element ``i`` rotates with element ``i + D/2``.
The rotation is computed in float32 and rounded once.

With a :class:`~infer_core.kernels.kv_cache_write.KVWrite`, the same launch also stores the
rotated keys (the rounded values written back into ``k``) and the values ``v`` into the KV
cache at each token's slot, through ``kv_cache_write``'s own store helper: the cache ends up
bit for bit as after this kernel and then :func:`~infer_core.kernels.kv_cache_write.write_kv`.
The program of token ``t`` rotates all of its q and k heads, so it also stores all of its K
and V heads (nothing when ``slot_mapping[t]`` is negative).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infer_core.kernels.kv_cache_write import KVWrite, kv_write_args, store_halves
from infer_core.kernels.pdl import use_pdl, wait_for_prior


@triton.jit
def _rotate_heads(x_ptr, token, stride_t, stride_h, num_heads, cos, sin,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_HALF)
    mask = (heads[:, None] < num_heads) & (dims[None, :] < HALF)
    ptr = x_ptr + token * stride_t + heads[:, None] * stride_h + dims[None, :]
    x1 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    out_ty = x_ptr.dtype.element_ty
    y1 = (x1 * cos - x2 * sin).to(out_ty)
    y2 = (x2 * cos + x1 * sin).to(out_ty)
    tl.store(ptr, y1, mask=mask)
    tl.store(ptr + HALF, y2, mask=mask)
    return y1, y2


@triton.jit
def _rotary_kernel(
    positions_ptr, q_ptr, k_ptr, cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cos, stride_sin,
    num_q_heads, num_k_heads,
    v_ptr, cache_ptr, slot_ptr, scales_ptr, stride_vt, stride_vh, stride_kv, stride_slot, stride_head,
    HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr,
    WRITE_KV: tl.constexpr, FP8: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:
        wait_for_prior()
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)
    dmask = dims < HALF
    cos = tl.load(cos_ptr + pos * stride_cos + dims, mask=dmask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + pos * stride_sin + dims, mask=dmask, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(q_ptr, token, stride_qt, stride_qh, num_q_heads, cos, sin, HALF, BLOCK_HQ, BLOCK_HALF)
    k1, k2 = _rotate_heads(k_ptr, token, stride_kt, stride_kh, num_k_heads, cos, sin, HALF, BLOCK_HK, BLOCK_HALF)
    if WRITE_KV:
        slot = tl.load(slot_ptr + token).to(tl.int64)
        if slot >= 0:
            heads = tl.arange(0, BLOCK_HK)
            mask = (heads[:, None] < num_k_heads) & dmask[None, :]
            store_halves(cache_ptr, scales_ptr, v_ptr, token, stride_vt, stride_vh, slot, heads, dims, mask, k1, k2,
                         HALF, stride_kv, stride_slot, stride_head, FP8)


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    kv: KVWrite | None = None,
) -> None:
    """Rotate ``q`` and ``k`` in place (views with a unit last stride are fine); with ``kv``,
    also store the rotated ``k`` and ``kv.v`` into ``kv.kv_cache`` at ``kv.slot_mapping``."""
    assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] == positions.shape[0]
    assert q.shape[-1] == k.shape[-1] and q.stride(-1) == 1 and k.stride(-1) == 1
    kv_args, kv_flags = kv_write_args(kv, k)
    half = q.shape[-1] // 2
    assert cos.shape[-1] == half and sin.shape[-1] == half
    assert cos.stride(-1) == 1 and sin.stride(-1) == 1
    if q.shape[0] == 0:
        return
    block_half = triton.next_power_of_2(half)
    elems = (q.shape[1] + k.shape[1]) * q.shape[-1]
    pdl = use_pdl(q)
    _rotary_kernel[(q.shape[0],)](
        positions, q, k, cos, sin,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
        q.shape[1], k.shape[1], *kv_args,
        HALF=half, BLOCK_HQ=triton.next_power_of_2(q.shape[1]),
        BLOCK_HK=triton.next_power_of_2(k.shape[1]), BLOCK_HALF=block_half, **kv_flags, PDL=pdl,
        num_warps=min(triton.next_power_of_2(max(elems // 1024, 1)), 8), launch_pdl=pdl,
    )


def rotary_embedding_ref(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> None:
    c = cos[positions].float().unsqueeze(-2)
    s = sin[positions].float().unsqueeze(-2)
    for x in (q, k):
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        x.copy_(torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1))
