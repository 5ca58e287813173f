"""The ``triton`` attention backend (the default on CUDA): the KV-write kernel, then one
unified paged-attention launch for the whole flat batch (plus the split-KV reduction when a
decode-only step is split along the keys). Handles mixed prefill chunks and decodes, GQA,
any block size, sliding windows, logit soft-capping and FP8 (e4m3) KV caches.

It declares ``supports_fused_kv_write``: when the model's RoPE kernel has already stored the
step's K/V (``Attention.forward_rope`` on CUDA), the layer calls :meth:`attend`, the paged
attention alone; :meth:`forward` is the KV write followed by :meth:`attend`."""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import BaseModel, ConfigDict, Field

from infer_core.attention.backend import AttentionBackend, AttentionLayer
from infer_core.attention.metadata import AttentionMetadata
from infer_core.kernels.kv_cache_write import write_kv
from infer_core.kernels.paged_attention import choose_config, paged_attention


class TritonAttentionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kv_splits: int | None = Field(
        None, ge=1, le=64,
        description="Split every decode-only step's keys into this many parts (default: chosen "
                    "per step from the batch size and the number of multiprocessors).",
    )


class TritonAttentionBackend(AttentionBackend):
    """Fused paged attention in Triton; supports ``cache.kv_dtype = "fp8"``."""

    supports_fp8_kv = True
    supports_cuda_graphs = True
    supports_fused_kv_write = True

    def __init__(self, options: TritonAttentionOptions | None = None) -> None:
        super().__init__(options)
        self.kv_splits = options.kv_splits if options is not None else None

    def forward(
        self,
        layer: AttentionLayer,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        kv_scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        write_kv(kv_cache, k, v, metadata.slot_mapping, kv_scales)
        return self.attend(layer, q, kv_cache, metadata, kv_scales)

    def attend(
        self,
        layer: AttentionLayer,
        q: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        kv_scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        config = choose_config(layer, metadata, q.device, q.dtype, kv_cache.dtype)
        if self.kv_splits is not None and metadata.max_query_len == 1:
            config = replace(config, num_splits=self.kv_splits)
        return paged_attention(layer, q, kv_cache, metadata, kv_scales, config=config)
