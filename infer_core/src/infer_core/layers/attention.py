"""The attention layer models call: static per-layer parameters, the layer's KV cache
(bound by the runner), and the engine's attention backend.

Models call :meth:`Attention.forward_rope` with the projected q, k, v and their rotary module
(and QK-norms): where the backend declares ``supports_fused_kv_write`` and the rotary module's
Triton kernel runs (``RotaryEmbedding.kernel_applies``), that kernel also stores K/V into this
layer's cache and the backend only attends (``AttentionBackend.attend``); otherwise RoPE, then
:meth:`Attention.forward` (the backend writes K/V and attends)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from infer_core.attention.backend import AttentionBackend, AttentionLayer
from infer_core.attention.metadata import AttentionMetadata

if TYPE_CHECKING:
    from infer_core.layers.norm import RMSNorm
    from infer_core.layers.rotary import RotaryEmbedding


class Attention(nn.Module):
    def __init__(self, layer: AttentionLayer, backend: AttentionBackend) -> None:
        super().__init__()
        self.layer = layer
        self.backend = backend
        self.kv_cache = torch.empty(0)  # [2, num_blocks, block_size, Hkv, D], bound by the runner
        # [k_scale, v_scale] (float32, the cache's device) when the cache is FP8, else None
        self.kv_scales: torch.Tensor | None = None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, metadata: AttentionMetadata
    ) -> torch.Tensor:
        """``q [T, Hq, D]``, ``k``/``v [T, Hkv, D]`` → ``[T, Hq * D]``."""
        if self.kv_scales is None:
            out = self.backend.forward(self.layer, q, k, v, self.kv_cache, metadata)
        else:
            out = self.backend.forward(self.layer, q, k, v, self.kv_cache, metadata,
                                       kv_scales=self.kv_scales)
        return out.reshape(out.shape[0], -1)

    def forward_rope(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        metadata: AttentionMetadata, rotary: RotaryEmbedding,
        q_norm: RMSNorm | None = None, k_norm: RMSNorm | None = None,
    ) -> torch.Tensor:
        """Apply (QK-norm and) RoPE, write K/V, attend: ``q [T, Hq, D]``, ``k``/``v [T, Hkv, D]``
        → ``[T, Hq * D]``. With QK-norm, pass both norms (Qwen 3, Gemma 3)."""
        assert (q_norm is None) == (k_norm is None), "QK-norm needs both q_norm and k_norm"
        kv = None
        if self.backend.supports_fused_kv_write and rotary.kernel_applies(q, k, q_norm, k_norm):
            from infer_core.kernels.kv_cache_write import KVWrite

            kv = KVWrite(v, self.kv_cache, metadata.slot_mapping, self.kv_scales)
        if q_norm is None:
            q, k = rotary(positions, q, k, kv=kv)
        else:
            q, k = rotary.forward_with_qk_norm(positions, q, k, q_norm, k_norm, kv=kv)
        if kv is None:
            return self.forward(q, k, v, metadata)
        out = self.backend.attend(self.layer, q, self.kv_cache, metadata, kv_scales=self.kv_scales)
        return out.reshape(out.shape[0], -1)
