"""The attention-backend interface.

A backend receives, per layer, the step's new ``q [T, Hq, D]``, ``k``/``v [T, Hkv, D]``, that
layer's KV cache ``[2, num_blocks, block_size, Hkv, D]`` and the flat batch's
:class:`~infer_core.attention.metadata.AttentionMetadata`. It writes the new K/V into the cache
through the slot mapping, then computes causal attention of each request's queries over its
cached keys (prefill chunks and decodes mixed in one batch), with GQA and an optional sliding
window. Backends are plugins registered through ``infer_register_attention_backends``.

A backend that sets ``supports_fp8_kv = True`` also accepts a float8 (e4m3) cache; it is then
called with ``kv_scales`` (float32 ``[k_scale, v_scale]`` of that layer): the cache holds
``x / scale`` and attention multiplies back.

A backend that sets ``supports_fused_kv_write = True`` also implements :meth:`attend`: the
same attention as :meth:`forward`, over a cache that already holds the step's K/V. The
attention layer (``layers.attention.Attention.forward_rope``) then lets the RoPE kernel (or
the fused QK-norm + RoPE kernel) store K and V into the cache in its own launch, exactly as
the backend's write would have (same slots, padding skipped, same FP8 scaling), and calls
``attend`` instead of ``forward``: one launch fewer per layer. Where that kernel does not run
(CPU, other layouts) and for backends without the flag, the layer calls ``forward`` as
before, so a backend that only implements ``forward`` keeps working unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel

from infer_core.attention.metadata import AttentionMetadata


@dataclass(frozen=True)
class AttentionLayer:
    """The static attention parameters of one layer."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    sliding_window: int | None = None  # a query sees keys at distance < sliding_window
    logit_softcap: float | None = None

    def __post_init__(self) -> None:
        assert self.num_heads % self.num_kv_heads == 0, "query heads must group over KV heads"


class AttentionBackend(ABC):
    """Runs attention for every layer of a model; one instance per engine."""

    supports_fp8_kv: ClassVar[bool] = False
    # True when forward reads only the metadata's device tensors (never its host lists or
    # values that change per step), so a decode step can be captured once and replayed as a
    # CUDA graph with other lengths; max_seq_len is then max_model_len.
    supports_cuda_graphs: ClassVar[bool] = False
    # True when attend() is implemented: the layer may then write K/V into the cache itself
    # (fused into its RoPE kernel) and call attend() instead of forward().
    supports_fused_kv_write: ClassVar[bool] = False

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options

    @staticmethod
    def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_dim)

    @abstractmethod
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
        """Write ``k``/``v`` into ``kv_cache`` and return the attention output ``[T, Hq, D]``
        (``kv_scales`` is passed only with an FP8 cache, to backends that support one)."""

    def attend(
        self,
        layer: AttentionLayer,
        q: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        kv_scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The attention output ``[T, Hq, D]`` of ``q`` over ``kv_cache``, which already holds
        this step's K/V at ``metadata.slot_mapping`` (written in the RoPE kernel's launch);
        ``forward`` without its write. Called only on backends that set
        ``supports_fused_kv_write``."""
        raise NotImplementedError(
            f"attention backend {type(self).__name__} does not implement attend(); a backend must "
            f"set supports_fused_kv_write = True and implement attend() to receive a cache that "
            f"already holds the step's K/V."
        )
