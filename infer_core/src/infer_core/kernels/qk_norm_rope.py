"""QK-norm and RoPE in one launch, in place on ``q [T, Hq, D]`` and ``k [T, Hkv, D]``
(Qwen 3, Gemma 3).

The same function as :func:`~infer_core.kernels.rms_norm.rms_norm` on each head of q (weight
``q_weight``) and of k (``k_weight``), then
:func:`~infer_core.kernels.rotary.rotary_embedding` at ``positions``, with the same numerics:
RMSNorm in float32 (Llama / Qwen round the normalized value to the input dtype before the
weight multiply; Gemma multiplies by ``1 + w`` in float32), the normed head rounded to the
input dtype (where the separate kernels store it), then the rotation in float32, rounded once.
Each element is read once and written once instead of three reads and three writes over
three launches; at batch 1 under a CUDA graph the launches are what a layer costs.

Grid: ``(T, cdiv(Hq + Hkv, BLOCK_H))``. The q heads and k heads are one list of
``Hq + Hkv`` heads (each row's pointer and weight picked by whether it is a q or a k head);
a program normalizes and rotates ``BLOCK_H`` of them for one token, as two ``[BLOCK_H, D/2]``
halves (element ``i`` rotates with ``i + D/2``), so the norm's sum and the rotation need no
shuffle. :func:`heads_per_program` picks ``BLOCK_H`` from measurements on an H200: decode
batches (up to 32 tokens) are latency-bound and run fastest with 2 heads per program (short
programs, many of them); larger batches are bandwidth-bound and want about 2048 elements per
program (one row per program, the plain QK-norm's grid, reached only 10-34 % of copy).

With a :class:`~infer_core.kernels.kv_cache_write.KVWrite`, the same launch also stores the
normed and rotated keys (the rounded values written back into ``k``) and the values ``v``
into the KV cache at each token's slot, through ``kv_cache_write``'s store helper: the cache
ends up bit for bit as after this kernel and then
:func:`~infer_core.kernels.kv_cache_write.write_kv`. Each program stores the k heads it
holds and the v heads of the same indices, so every K and V head is stored exactly once;
programs holding only q heads (and every program of a token whose slot is negative) store
nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infer_core.kernels.kv_cache_write import KVWrite, kv_write_args, store_halves
from infer_core.kernels.pdl import use_pdl, wait_for_prior
from infer_core.kernels.rms_norm import rms_norm_ref
from infer_core.kernels.rotary import rotary_embedding_ref

MAX_ELEMENTS = 2048  # per program, for batches above SMALL_BATCH tokens
SMALL_BATCH = 32


@triton.jit
def norm_rope(x1, x2, w1, w2, cos, sin, eps, HALF: tl.constexpr, GEMMA: tl.constexpr):
    """RMSNorm of each row given as halves ``x1``/``x2 [R, BLOCK_HALF]`` (rms_norm's formula,
    weight halves ``w1``/``w2`` in float32), rounded to the input dtype, then RoPE (rotary's
    formula, float32 ``cos``/``sin``), rounded once. Shared with
    :mod:`~infer_core.kernels.decode_layer`."""
    dtype = x1.dtype
    h1 = x1.to(tl.float32)
    h2 = x2.to(tl.float32)
    rstd = 1.0 / tl.sqrt((tl.sum(h1 * h1, axis=1) + tl.sum(h2 * h2, axis=1)) / (2 * HALF) + eps)
    h1 = h1 * rstd[:, None]
    h2 = h2 * rstd[:, None]
    if GEMMA:
        y1 = h1 * (1.0 + w1)
        y2 = h2 * (1.0 + w2)
    else:
        y1 = h1.to(dtype).to(tl.float32) * w1
        y2 = h2.to(dtype).to(tl.float32) * w2
    y1 = y1.to(dtype).to(tl.float32)
    y2 = y2.to(dtype).to(tl.float32)
    return (y1 * cos - y2 * sin).to(dtype), (y2 * cos + y1 * sin).to(dtype)


@triton.jit
def _qk_norm_rope_kernel(
    positions_ptr, q_ptr, k_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cos, stride_sin,
    num_q_heads, num_heads, eps,
    v_ptr, cache_ptr, slot_ptr, scales_ptr, stride_vt, stride_vh, stride_kv, stride_slot, stride_head,
    HALF: tl.constexpr, GEMMA: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
    WRITE_KV: tl.constexpr, FP8: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:
        wait_for_prior()
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_HALF)
    dmask = dims < HALF
    is_q = heads < num_q_heads
    mask = (heads < num_heads)[:, None] & dmask[None, :]
    row = tl.where(is_q, q_ptr + token * stride_qt + heads * stride_qh,
                   k_ptr + token * stride_kt + (heads - num_q_heads) * stride_kh)
    ptr = row[:, None] + dims[None, :]
    x1 = tl.load(ptr, mask=mask, other=0.0)
    x2 = tl.load(ptr + HALF, mask=mask, other=0.0)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    cos = tl.load(cos_ptr + pos * stride_cos + dims, mask=dmask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + pos * stride_sin + dims, mask=dmask, other=0.0).to(tl.float32)[None, :]
    qw1 = tl.load(qw_ptr + dims, mask=dmask, other=0.0).to(tl.float32)[None, :]
    qw2 = tl.load(qw_ptr + HALF + dims, mask=dmask, other=0.0).to(tl.float32)[None, :]
    kw1 = tl.load(kw_ptr + dims, mask=dmask, other=0.0).to(tl.float32)[None, :]
    kw2 = tl.load(kw_ptr + HALF + dims, mask=dmask, other=0.0).to(tl.float32)[None, :]
    w1 = tl.where(is_q[:, None], qw1, kw1)
    w2 = tl.where(is_q[:, None], qw2, kw2)

    o1, o2 = norm_rope(x1, x2, w1, w2, cos, sin, eps, HALF, GEMMA)
    tl.store(ptr, o1, mask=mask)
    tl.store(ptr + HALF, o2, mask=mask)

    if WRITE_KV:
        # K heads of this program (the same rounded values as just stored) and V heads of the
        # same indices; programs with only q heads have none.
        slot = tl.load(slot_ptr + token).to(tl.int64)
        if (slot >= 0) & (tl.program_id(1) * BLOCK_H + BLOCK_H > num_q_heads):
            store_halves(cache_ptr, scales_ptr, v_ptr, token, stride_vt, stride_vh, slot, heads - num_q_heads,
                         dims, mask & (heads >= num_q_heads)[:, None], o1, o2, HALF, stride_kv, stride_slot,
                         stride_head, FP8)


def heads_per_program(tokens: int, num_heads: int, head_dim: int) -> int:
    """``BLOCK_H``, the heads one program takes (measured on an H200, see docs/kernels.md).

    Up to ``SMALL_BATCH`` tokens (decode) the step is latency-bound: 2 heads per program, so
    each program's chain of loads, reduction and stores is short. Larger batches are
    bandwidth-bound: the largest power of two within ``MAX_ELEMENTS`` per program, halved
    while more than a quarter of its head slots would be idle (Llama-3.2-1B's 32 + 8 heads of
    64: 16; Qwen3-1.7B's 16 + 8 of 128: 16; gemma-3-1b's 4 + 1 of 256: 2)."""
    if tokens <= SMALL_BATCH:
        return min(2, num_heads)
    block = min(max(1, MAX_ELEMENTS // (2 * triton.next_power_of_2(head_dim // 2))),
                triton.next_power_of_2(num_heads))
    while block > 1:
        slots = triton.cdiv(num_heads, block) * block
        if 4 * (slots - num_heads) <= slots:
            break
        block //= 2
    return block


def qk_norm_rope(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
    q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    eps: float, gemma: bool = False, *, block_h: int | None = None, kv: KVWrite | None = None,
) -> None:
    """RMSNorm each head of ``q`` and ``k`` (weights ``[D]``), then rotate both at
    ``positions`` by the ``[max_positions, D/2]`` tables; in place. q and k may be views into
    a fused qkv row (unit last stride, any token and head strides). ``block_h`` overrides
    :func:`heads_per_program` (benchmarks). With ``kv``, also store the resulting ``k`` and
    ``kv.v`` into ``kv.kv_cache`` at ``kv.slot_mapping``."""
    assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] == positions.shape[0]
    assert q.shape[-1] == k.shape[-1] and q.stride(-1) == 1 and k.stride(-1) == 1
    assert q.dtype == k.dtype == q_weight.dtype == k_weight.dtype, (q.dtype, k.dtype, q_weight.dtype)
    head_dim = q.shape[-1]
    assert head_dim % 2 == 0 and q_weight.shape == k_weight.shape == (head_dim,)
    assert q_weight.is_contiguous() and k_weight.is_contiguous()
    kv_args, kv_flags = kv_write_args(kv, k)
    half = head_dim // 2
    assert cos.shape[-1] == half and sin.shape[-1] == half
    assert cos.stride(-1) == 1 and sin.stride(-1) == 1
    tokens, num_heads = q.shape[0], q.shape[1] + k.shape[1]
    if tokens == 0:
        return
    block_half = triton.next_power_of_2(half)
    block_h = block_h or heads_per_program(tokens, num_heads, head_dim)
    elems = block_h * 2 * block_half
    pdl = use_pdl(q)
    _qk_norm_rope_kernel[(tokens, triton.cdiv(num_heads, block_h))](
        positions, q, k, q_weight, k_weight, cos, sin,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
        q.shape[1], num_heads, eps, *kv_args,
        HALF=half, GEMMA=gemma, BLOCK_H=block_h, BLOCK_HALF=block_half, **kv_flags, PDL=pdl,
        num_warps=min(triton.next_power_of_2(max(elems // 512, 1)), 8), launch_pdl=pdl,
    )


def qk_norm_rope_ref(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
    q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    eps: float, gemma: bool = False,
) -> None:
    """The separate references in sequence: ``rms_norm_ref`` on q and k, ``rotary_embedding_ref``."""
    q.copy_(rms_norm_ref(q, q_weight, eps, gemma))
    k.copy_(rms_norm_ref(k, k_weight, eps, gemma))
    rotary_embedding_ref(positions, q, k, cos, sin)
