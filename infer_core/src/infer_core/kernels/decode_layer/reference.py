"""The torch reference of the persistent decode layer: the separate references in the unfused
path's order and roundings."""

from __future__ import annotations

import torch

from infer_core.attention.backend import AttentionLayer
from infer_core.attention.metadata import AttentionMetadata
from infer_core.kernels.act_and_mul import silu_and_mul_ref
from infer_core.kernels.decode_layer.launch import DecodeLayerWeights
from infer_core.kernels.kv_cache_write import write_kv_ref
from infer_core.kernels.paged_attention import paged_attention_ref
from infer_core.kernels.rms_norm import rms_norm_ref
from infer_core.kernels.rotary import rotary_embedding_ref


def decode_layer_ref(
    x: torch.Tensor, residual: torch.Tensor | None, weights: DecodeLayerWeights, layer: AttentionLayer,
    kv_cache: torch.Tensor, metadata: AttentionMetadata, positions: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference: the separate references in the unfused path's order and roundings
    (``kv_cache`` written in place)."""
    dtype = x.dtype
    hq, hkv, d = layer.num_heads, layer.num_kv_heads, layer.head_dim

    def linear(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (a.float() @ w.float().T).to(dtype)

    h1 = x if residual is None else x + residual
    qkv = linear(rms_norm_ref(h1, weights.input_norm, weights.eps), weights.qkv)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q, k, v = q.reshape(1, hq, d), k.reshape(1, hkv, d), v.reshape(1, hkv, d)
    if weights.q_norm is not None:
        q, k = rms_norm_ref(q, weights.q_norm, weights.eps), rms_norm_ref(k, weights.k_norm, weights.eps)
    rotary_embedding_ref(positions, q, k, cos, sin)
    write_kv_ref(kv_cache, k, v, metadata.slot_mapping)
    attn = paged_attention_ref(layer, q, kv_cache, metadata).reshape(1, hq * d)
    h2 = linear(attn, weights.o) + h1
    gate_up = linear(rms_norm_ref(h2, weights.post_norm, weights.eps), weights.gate_up)
    return linear(silu_and_mul_ref(gate_up), weights.down), h2
