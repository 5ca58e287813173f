"""Writing a step's keys and values into the paged KV cache through the slot mapping.

``kv_cache [2, num_blocks, block_size, Hkv, D]``; token ``t`` goes to flat slot
``slot_mapping[t] = block * block_size + offset`` (a negative slot means "padding, skip",
so a captured decode can run over padded rows). With an FP8 (e4m3) cache, each layer has
``kv_scales = [k_scale, v_scale]`` (float32, on the device): the cache holds
``clamp(x / scale, -448, 448)`` rounded to e4m3, and attention multiplies back.

The store itself (slot and head addressing, FP8 scaling, the cast to the cache's dtype) is one
``@triton.jit`` helper, :func:`store_kv`, used by :func:`write_kv`'s kernel and by the RoPE
kernels (:mod:`~infer_core.kernels.rotary`, :mod:`~infer_core.kernels.qk_norm_rope`), which
take a :class:`KVWrite` to store the rotated keys and the values in the same launch (one
launch fewer per layer; the attention backend then only attends, see
``AttentionBackend.attend``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from infer_core.kernels.pdl import use_pdl, wait_for_prior

FP8_MAX = 448.0  # largest finite float8_e4m3fn


@triton.jit
def store_kv(cache_ptr, slot, heads, dims, mask, x, scale_ptr, stride_slot, stride_head, FP8: tl.constexpr):
    """Store ``x [BLOCK_H, BLOCK_D]`` (rows: KV heads ``heads``, columns: elements ``dims`` of
    the head) of one token at flat slot ``slot`` (>= 0) of one half of the cache: ``cache_ptr``
    is the K half's base or the V half's (base + ``stride_kv``), ``scale_ptr`` the matching
    scale. FP8: ``clamp(x / scale, -448, 448)`` in float32, then the cast to e4m3."""
    dst = cache_ptr + slot * stride_slot + heads[:, None] * stride_head + dims[None, :]
    if FP8:
        x = tl.clamp(x.to(tl.float32) / tl.load(scale_ptr), -448.0, 448.0)
    tl.store(dst, x.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def store_halves(cache_ptr, scales_ptr, v_ptr, token, stride_vt, stride_vh, slot, heads, dims, mask, k1, k2,
                 HALF: tl.constexpr, stride_kv, stride_slot, stride_head, FP8: tl.constexpr):
    """The RoPE kernels' fused write: K heads ``heads`` of one token as their two rotated halves
    ``k1``/``k2 [BLOCK_H, BLOCK_HALF]`` (elements ``dims`` and ``dims + HALF``), and the V
    heads of the same indices loaded from ``v_ptr``, stored at ``slot`` with :func:`store_kv`."""
    v_row = v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :]
    v1 = tl.load(v_row, mask=mask)
    v2 = tl.load(v_row + HALF, mask=mask)
    store_kv(cache_ptr, slot, heads, dims, mask, k1, scales_ptr, stride_slot, stride_head, FP8)
    store_kv(cache_ptr, slot, heads, dims + HALF, mask, k2, scales_ptr, stride_slot, stride_head, FP8)
    v_half = cache_ptr + stride_kv
    store_kv(v_half, slot, heads, dims, mask, v1, scales_ptr + 1, stride_slot, stride_head, FP8)
    store_kv(v_half, slot, heads, dims + HALF, mask, v2, scales_ptr + 1, stride_slot, stride_head, FP8)


@triton.jit
def _kv_cache_write_kernel(
    k_ptr, v_ptr, cache_ptr, slot_ptr, scales_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kv, stride_slot, stride_head,
    num_heads,
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, FP8: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        wait_for_prior()
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        heads = tl.arange(0, BLOCK_H)
        dims = tl.arange(0, BLOCK_D)
        mask = (heads[:, None] < num_heads) & (dims[None, :] < HEAD_DIM)
        k = tl.load(k_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=mask)
        v = tl.load(v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
        store_kv(cache_ptr, slot, heads, dims, mask, k, scales_ptr, stride_slot, stride_head, FP8)
        store_kv(cache_ptr + stride_kv, slot, heads, dims, mask, v, scales_ptr + 1, stride_slot, stride_head, FP8)


def _check(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor,
           kv_scales: torch.Tensor | None) -> bool:
    """Shape and stride checks of a write of ``k``/``v`` into ``kv_cache``; whether it is FP8."""
    two, _, _, heads, dim = kv_cache.shape
    assert two == 2 and k.shape == v.shape == (slot_mapping.shape[0], heads, dim), (k.shape, v.shape, kv_cache.shape)
    assert k.stride(-1) == 1 and v.stride(-1) == 1 and kv_cache.is_contiguous()
    fp8 = kv_cache.dtype == torch.float8_e4m3fn
    assert not fp8 or (kv_scales is not None and kv_scales.numel() == 2), "fp8 KV needs kv_scales"
    return fp8


def write_kv(
    kv_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_scales: torch.Tensor | None = None,
) -> None:
    """Scatter ``k``/``v [T, Hkv, D]`` (unit last stride) into ``kv_cache`` at ``slot_mapping``."""
    fp8 = _check(kv_cache, k, v, slot_mapping, kv_scales)
    if k.shape[0] == 0:
        return
    heads, dim = kv_cache.shape[3], kv_cache.shape[4]
    block_h, block_d = triton.next_power_of_2(heads), triton.next_power_of_2(dim)
    pdl = use_pdl(k)
    _kv_cache_write_kernel[(k.shape[0],)](
        k, v, kv_cache, slot_mapping, kv_scales if fp8 else slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_cache.stride(0), kv_cache.stride(2), kv_cache.stride(3),
        heads,
        HEAD_DIM=dim, BLOCK_H=block_h, BLOCK_D=block_d, FP8=fp8, PDL=pdl,
        num_warps=min(max(block_h * block_d // 1024, 1), 8), launch_pdl=pdl,
    )


@dataclass(frozen=True)
class KVWrite:
    """A KV-cache write for a RoPE kernel to do in its own launch: store the rotated (and, for
    ``qk_norm_rope``, normed) ``k`` — the very values written back into ``k`` — and ``v`` at
    each token's slot, exactly as :func:`write_kv` would store them afterwards.

    ``v [T, Hkv, D]`` (unit last stride), ``kv_cache [2, num_blocks, block_size, Hkv, D]``,
    ``slot_mapping [T]`` (negative: padding, skipped), ``kv_scales`` float32
    ``[k_scale, v_scale]`` for an FP8 (e4m3) cache, else None."""

    v: torch.Tensor
    kv_cache: torch.Tensor
    slot_mapping: torch.Tensor
    kv_scales: torch.Tensor | None = None


def kv_write_args(kv: KVWrite | None, k: torch.Tensor) -> tuple[tuple, dict[str, bool]]:
    """The arguments a RoPE kernel takes for an optional fused write of its ``k [T, Hkv, D]``:
    ``(v, cache, slots, scales, stride_vt, stride_vh, stride_kv, stride_slot, stride_head)`` and
    the constexprs ``WRITE_KV`` and ``FP8``. Without a write, placeholders that the kernel never
    touches (the ``WRITE_KV=False`` variant compiles the store away)."""
    if kv is None:
        return (k, k, k, k, 0, 0, 0, 0, 0), {"WRITE_KV": False, "FP8": False}
    cache, slots = kv.kv_cache, kv.slot_mapping
    fp8 = _check(cache, k, kv.v, slots, kv.kv_scales)
    args = (kv.v, cache, slots, kv.kv_scales if fp8 else slots,
            kv.v.stride(0), kv.v.stride(1), cache.stride(0), cache.stride(2), cache.stride(3))
    return args, {"WRITE_KV": True, "FP8": fp8}


def quantize_fp8_ref(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What the cache stores for ``x`` under ``scale``: ``clamp(x / scale)`` in e4m3."""
    return (x.float() / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def write_kv_ref(
    kv_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_scales: torch.Tensor | None = None,
) -> None:
    _, num_blocks, block_size, heads, dim = kv_cache.shape
    flat = kv_cache.view(2, num_blocks * block_size, heads, dim)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k, v = k[keep], v[keep]
    if kv_cache.dtype == torch.float8_e4m3fn:
        assert kv_scales is not None
        k, v = quantize_fp8_ref(k, kv_scales[0]), quantize_fp8_ref(v, kv_scales[1])
    flat[0, slots] = k.to(kv_cache.dtype)
    flat[1, slots] = v.to(kv_cache.dtype)
