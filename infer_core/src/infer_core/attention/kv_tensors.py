"""Allocating the per-layer KV-cache tensors and binding them to a model's attention layers."""

from __future__ import annotations

import torch

from infer_core.models.base import CausalLM


def kv_bytes_per_token(model: CausalLM, dtype: torch.dtype) -> int:
    size = torch.empty(0, dtype=dtype).element_size()
    return sum(2 * layer.num_kv_heads * layer.head_dim * size for layer in model.kv_layers())


def allocate_kv_caches(
    model: CausalLM, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device | str
) -> list[torch.Tensor]:
    """One zeroed ``[2, num_blocks, block_size, Hkv, D]`` tensor per attention layer, bound
    to that layer; returns them in layer order."""
    caches = []
    for attention in model.attention_layers():
        layer = attention.layer
        shape = attention.backend.kv_cache_shape(num_blocks, block_size, layer.num_kv_heads, layer.head_dim)
        attention.kv_cache = torch.zeros(shape, dtype=dtype, device=device)
        caches.append(attention.kv_cache)
    return caches
