"""Writing a step's keys and values into the paged KV cache through the slot mapping.

``kv_cache [2, num_blocks, block_size, Hkv, D]``; token ``t`` goes to flat slot
``slot_mapping[t] = block * block_size + offset`` (a negative slot means "padding, skip",
so a captured decode can run over padded rows). With an FP8 (e4m3) cache, each layer has
``kv_scales = [k_scale, v_scale]`` (float32, on the device): the cache holds
``clamp(x / scale, -448, 448)`` rounded to e4m3, and attention multiplies back.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0  # largest finite float8_e4m3fn


@triton.jit
def _kv_cache_write_kernel(
    k_ptr, v_ptr, cache_ptr, slot_ptr, scales_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kv, stride_slot, stride_head,
    num_heads,
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, FP8: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        heads = tl.arange(0, BLOCK_H)
        dims = tl.arange(0, BLOCK_D)
        mask = (heads[:, None] < num_heads) & (dims[None, :] < HEAD_DIM)
        k = tl.load(k_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=mask)
        v = tl.load(v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
        dst = cache_ptr + slot * stride_slot + heads[:, None] * stride_head + dims[None, :]
        if FP8:
            k = tl.clamp(k.to(tl.float32) / tl.load(scales_ptr), -448.0, 448.0)
            v = tl.clamp(v.to(tl.float32) / tl.load(scales_ptr + 1), -448.0, 448.0)
        out_ty = cache_ptr.dtype.element_ty
        tl.store(dst, k.to(out_ty), mask=mask)
        tl.store(dst + stride_kv, v.to(out_ty), mask=mask)


def write_kv(
    kv_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_scales: torch.Tensor | None = None,
) -> None:
    """Scatter ``k``/``v [T, Hkv, D]`` (unit last stride) into ``kv_cache`` at ``slot_mapping``."""
    two, _, _, heads, dim = kv_cache.shape
    assert two == 2 and k.shape == v.shape == (slot_mapping.shape[0], heads, dim), (k.shape, kv_cache.shape)
    assert k.stride(-1) == 1 and v.stride(-1) == 1 and kv_cache.is_contiguous()
    fp8 = kv_cache.dtype == torch.float8_e4m3fn
    assert not fp8 or (kv_scales is not None and kv_scales.numel() == 2), "fp8 KV needs kv_scales"
    if k.shape[0] == 0:
        return
    block_h, block_d = triton.next_power_of_2(heads), triton.next_power_of_2(dim)
    _kv_cache_write_kernel[(k.shape[0],)](
        k, v, kv_cache, slot_mapping, kv_scales if fp8 else slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_cache.stride(0), kv_cache.stride(2), kv_cache.stride(3),
        heads,
        HEAD_DIM=dim, BLOCK_H=block_h, BLOCK_D=block_d, FP8=fp8,
        num_warps=min(max(block_h * block_d // 1024, 1), 8),
    )


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
