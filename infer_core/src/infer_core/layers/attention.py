"""The attention layer models call: static per-layer parameters, the layer's KV cache
(bound by the runner), and the engine's attention backend."""

from __future__ import annotations

import torch
from torch import nn

from infer_core.attention.backend import AttentionBackend, AttentionLayer
from infer_core.attention.metadata import AttentionMetadata


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
