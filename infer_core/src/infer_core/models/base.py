"""The model interface: what an architecture plugin's model class provides.

A model takes the flat batch — ``input_ids [T]``, ``positions [T]`` and the attention
metadata — and returns hidden states ``[T, H]``; ``compute_logits`` projects only the rows
that will be sampled. Weights come from a Hugging Face checkpoint through
:meth:`CausalLM.map_weight_name` and ``packed_modules`` (fused projections).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from infer_core.attention.backend import AttentionBackend, AttentionLayer
from infer_core.attention.metadata import AttentionMetadata
from infer_core.layers.attention import Attention
from infer_core.parallel.group import TPGroup


@dataclass(frozen=True)
class ModelContext:
    """What the engine hands every model at construction. ``tp`` is this rank's
    tensor-parallel group (one rank by default): a model builds its layers from
    :mod:`infer_core.layers.parallel` with it, and they hold this rank's part of each weight."""

    attn_backend: AttentionBackend
    max_model_len: int
    tp: TPGroup = field(default_factory=TPGroup)


class CausalLM(nn.Module, ABC):
    """Base class of architectures (``XForCausalLM`` in each model plugin)."""

    # checkpoint module name -> (fused module name, shard index), e.g. q_proj -> (qkv_proj, 0)
    packed_modules: ClassVar[dict[str, tuple[str, int]]] = {}

    @abstractmethod
    def __init__(self, hf_config: dict[str, Any], ctx: ModelContext) -> None:
        super().__init__()

    @abstractmethod
    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        """Hidden states ``[T, hidden_size]`` after the final norm."""

    @abstractmethod
    def compute_logits(self, hidden: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[len(indices), vocab]`` of the rows ``indices`` (all rows if ``None``)."""

    def compute_logits_greedy(self, hidden: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor) -> bool:
        """Optional: write ``compute_logits(hidden)`` into ``logits`` and their argmax into ``ids``
        (int64) in one pass, and return True; or return False (the default) and leave both to
        the caller. A decode CUDA graph asks for it (e.g. ``ParallelLMHead.forward_greedy``:
        one launch at one row)."""
        return False

    def forward_greedy(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata,
                       logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """A decode CUDA graph's body: ``(hidden, done)``, the hidden states of :meth:`forward`
        and whether :meth:`compute_logits_greedy` wrote ``logits`` and ``ids``. A model may fold
        its final norm into the head's launch here (``ParallelLMHead.forward_greedy(norm=...)``;
        ``hidden`` is then the stack's output before that norm, which no caller reads)."""
        hidden = self(input_ids, positions, attn_metadata)
        return hidden, self.compute_logits_greedy(hidden, logits, ids)

    def map_weight_name(self, name: str) -> str | None:
        """The parameter name of checkpoint tensor ``name``; ``None`` to skip it."""
        return name

    def attention_layers(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention)]

    def kv_layers(self) -> list[AttentionLayer]:
        """Per layer: the shape of its KV cache and its window (for cache sizing)."""
        return [a.layer for a in self.attention_layers()]
