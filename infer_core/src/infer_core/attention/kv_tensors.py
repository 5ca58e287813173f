"""Allocating the per-layer KV-cache tensors and binding them to a model's attention layers."""

from __future__ import annotations

import torch

from infer_core.attention.backend import AttentionBackend
from infer_core.errors import ConfigError
from infer_core.models.base import CausalLM

FP8_KV_DTYPE = torch.float8_e4m3fn


def kv_bytes_per_token(model: CausalLM, dtype: torch.dtype) -> int:
    size = torch.empty(0, dtype=dtype).element_size()
    return sum(2 * layer.num_kv_heads * layer.head_dim * size for layer in model.kv_layers())


def allocate_kv_caches(
    model: CausalLM, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device | str
) -> list[torch.Tensor]:
    """One zeroed ``[2, num_blocks, block_size, Hkv, D]`` tensor per attention layer, bound
    to that layer; returns them in layer order. With an FP8 (e4m3) cache each layer also gets
    its ``kv_scales = [k_scale, v_scale]`` (float32, 1.0: the cache stores K and V as they are,
    e4m3 covering magnitudes up to 448)."""
    caches = []
    for attention in model.attention_layers():
        layer = attention.layer
        shape = attention.backend.kv_cache_shape(num_blocks, block_size, layer.num_kv_heads, layer.head_dim)
        attention.kv_cache = torch.zeros(shape, dtype=dtype, device=device)
        attention.kv_scales = (torch.ones(2, dtype=torch.float32, device=device)
                               if dtype == FP8_KV_DTYPE else None)
        caches.append(attention.kv_cache)
    return caches


def check_fp8_kv(backend: AttentionBackend, name: str, device: torch.device) -> None:
    """Reject an FP8 KV cache that the chosen backend or the device cannot use."""
    if not backend.supports_fp8_kv:
        raise ConfigError(
            f"cache.kv_dtype 'fp8' needs an attention backend that reads FP8 caches, and "
            f"'{name}' does not; set attention.backend to 'triton' (on CUDA) or kv_dtype to 'auto'."
        )
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(
            f"cache.kv_dtype 'fp8' needs a GPU with FP8 support (compute capability 8.9 or newer: "
            f"Ada, Hopper), but this one is {major}.{minor}; use kv_dtype 'auto'."
        )
