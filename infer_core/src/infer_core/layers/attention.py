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

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, metadata: AttentionMetadata
    ) -> torch.Tensor:
        """``q [T, Hq, D]``, ``k``/``v [T, Hkv, D]`` → ``[T, Hq * D]``."""
        out = self.backend.forward(self.layer, q, k, v, self.kv_cache, metadata)
        return out.reshape(out.shape[0], -1)
