"""Qwen 3 (``Qwen3ForCausalLM``): Llama-style GQA attention with QK-norm (an RMSNorm over
``head_dim`` applied to every query and key head before RoPE), explicit ``head_dim``,
SiLU-gated MLP, pre-norm RMSNorm, tied embeddings on the small sizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from infer_core.attention.backend import AttentionLayer
from infer_core.attention.metadata import AttentionMetadata
from infer_core.layers.attention import Attention
from infer_core.layers.mlp import GatedMLP
from infer_core.layers.norm import RMSNorm
from infer_core.layers.parallel import (
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from infer_core.layers.persistent_decode import (
    LayerDescription,
    PersistentDecode,
    decoder_layer_weights,
)
from infer_core.layers.rotary import RotaryEmbedding
from infer_core.loader.hf_config import FULL_ATTENTION, SLIDING_ATTENTION, head_dim_of, rope_spec
from infer_core.models.base import CausalLM, ModelContext


def sliding_windows(cfg: dict[str, Any]) -> list[int | None]:
    """Per layer, the attention window, as transformers' ``Qwen3Config`` derives it: none
    unless ``use_sliding_window``; then on the ``sliding_attention`` entries of ``layer_types``,
    or (configs without them) on the layers from ``max_window_layers`` on."""
    n = cfg["num_hidden_layers"]
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window") else None
    if window is None:
        return [None] * n
    kinds = cfg.get("layer_types") or [
        SLIDING_ATTENTION if i >= cfg.get("max_window_layers", n) else FULL_ATTENTION for i in range(n)
    ]
    return [window if kind == SLIDING_ATTENTION else None for kind in kinds]


@dataclass(frozen=True)
class Qwen3Args:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    hidden_act: str
    attention_bias: bool
    tie_word_embeddings: bool
    sliding_windows: tuple[int | None, ...]  # per layer

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> Qwen3Args:
        return cls(
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            num_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            head_dim=head_dim_of(cfg),
            vocab_size=cfg["vocab_size"],
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            hidden_act=cfg.get("hidden_act", "silu"),
            attention_bias=cfg.get("attention_bias", False),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            sliding_windows=tuple(sliding_windows(cfg)),
        )


class Qwen3Attention(nn.Module):
    def __init__(
        self, args: Qwen3Args, rotary: RotaryEmbedding, ctx: ModelContext, sliding_window: int | None
    ) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(
            args.hidden_size, args.head_dim, args.num_heads, args.num_kv_heads, bias=args.attention_bias, tp=ctx.tp
        )
        self.q_size, self.kv_size = self.qkv_proj.sizes[0], self.qkv_proj.sizes[1]  # this rank's heads
        self.o_proj = RowParallelLinear(
            args.num_heads * args.head_dim, args.hidden_size, bias=args.attention_bias, tp=ctx.tp
        )
        self.q_norm = RMSNorm(args.head_dim, args.rms_norm_eps)
        self.k_norm = RMSNorm(args.head_dim, args.rms_norm_eps)
        self.rotary = rotary
        layer = AttentionLayer(
            self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, args.head_dim, args.head_dim**-0.5,
            sliding_window=sliding_window,
        )
        self.attn = Attention(layer, ctx.attn_backend)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, norm: RMSNorm,
        md: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``norm`` (the layer's input norm, after the residual add) runs with the QKV
        projection; returns ``(o_proj output, residual)``."""
        layer = self.attn.layer
        qkv, residual = self.qkv_proj.forward_normed(x, norm, residual)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, layer.num_heads, layer.head_dim)
        k = k.view(-1, layer.num_kv_heads, layer.head_dim)
        v = v.view(-1, layer.num_kv_heads, layer.head_dim)
        out = self.attn.forward_rope(positions, q, k, v, md, self.rotary, self.q_norm, self.k_norm)
        return self.o_proj(out), residual


class Qwen3DecoderLayer(nn.Module):
    def __init__(
        self, args: Qwen3Args, rotary: RotaryEmbedding, ctx: ModelContext, sliding_window: int | None
    ) -> None:
        super().__init__()
        self.self_attn = Qwen3Attention(args, rotary, ctx, sliding_window)
        self.mlp = GatedMLP(args.hidden_size, args.intermediate_size, args.hidden_act, bias=False, tp=ctx.tp)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, h: torch.Tensor, residual: torch.Tensor | None, md: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(mlp_out, residual)``; the layer's hidden state is their sum, which the
        next norm forms in the same pass (fused add + RMSNorm)."""
        h, residual = self.self_attn(positions, h, residual, self.input_layernorm, md)
        return self.mlp(h, residual, self.post_attention_layernorm)

    def persistent_decode_weights(self) -> LayerDescription:
        """This layer's tensors for the persistent batch-1 decode launch (or why not)."""
        a, m = self.self_attn, self.mlp
        weights, why = decoder_layer_weights(a.qkv_proj, a.o_proj, m.gate_up_proj, m.down_proj, m.act,
                                             self.input_layernorm, self.post_attention_layernorm, a.q_norm, a.k_norm)
        return weights, why, a.attn


class Qwen3Model(nn.Module):
    def __init__(self, args: Qwen3Args, hf_config: dict[str, Any], ctx: ModelContext) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(args.vocab_size, args.hidden_size, ctx.tp)
        rotary = RotaryEmbedding(args.head_dim, rope_spec(hf_config), ctx.max_model_len)
        self.layers = nn.ModuleList(
            Qwen3DecoderLayer(args, rotary, ctx, window) for window in args.sliding_windows
        )
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.persistent_decode = PersistentDecode(rotary, ctx.tp.size)  # opt-in: model.persistent_decode

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        return self.norm(*self.stack(input_ids, positions, md))[0]

    def stack(self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder stack before the final norm: ``(mlp_out, residual)`` of the last layer."""
        h, residual = self.embed_tokens(input_ids), None
        if self.persistent_decode.applies(h, md, lambda: [layer.persistent_decode_weights() for layer in self.layers]):
            return self.persistent_decode(h, positions, md)  # persistent launches (one per layer by default)
        for layer in self.layers:
            h, residual = layer(positions, h, residual, md)
        return h, residual


class Qwen3ForCausalLM(CausalLM):
    packed_modules = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, hf_config: dict[str, Any], ctx: ModelContext) -> None:
        super().__init__(hf_config, ctx)
        self.args = Qwen3Args.from_hf(hf_config)
        self.model = Qwen3Model(self.args, hf_config, ctx)
        self.lm_head = ParallelLMHead(self.args.vocab_size, self.args.hidden_size, ctx.tp)
        if self.args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(hidden if indices is None else hidden[indices])

    def compute_logits_greedy(self, hidden: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor) -> bool:
        return self.lm_head.forward_greedy(hidden, logits, ids)

    def forward_greedy(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata,
                       logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The final norm folded into the head's launch where that applies (INFER_LM_HEAD_NORM=1)."""
        h, residual = self.model.stack(input_ids, positions, attn_metadata)
        return self.lm_head.forward_greedy_after_stack(h, residual, self.model.norm, logits, ids)

    def map_weight_name(self, name: str) -> str | None:
        if "rotary_emb.inv_freq" in name:
            return None
        if name == "lm_head.weight" and self.args.tie_word_embeddings:
            return None
        return name
