"""Gemma 3 text models (``Gemma3ForCausalLM``, ``model_type`` ``gemma3_text``): GQA attention
with QK-norm and ``query_pre_attn_scalar ** -0.5`` scaling, interleaved sliding-window
(local) and global layers with their own RoPE bases, sandwich norms around attention and
MLP, ``(1 + w)`` RMSNorm, embeddings scaled by ``sqrt(hidden_size)``, GELU-tanh-gated MLP,
optional final logit soft-capping, tied embeddings.

``attn_logit_softcapping`` is ignored, as in transformers' Gemma 3 (QK-norm
took over from Gemma 2's attention soft-capping; every published Gemma 3 config sets it null,
and a checkpoint trained with transformers never saw it applied)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from infer_core.attention.backend import AttentionLayer
from infer_core.attention.metadata import AttentionMetadata
from infer_core.errors import ConfigError
from infer_core.layers.attention import Attention
from infer_core.layers.mlp import GatedMLP
from infer_core.layers.norm import RMSNorm
from infer_core.layers.parallel import (
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from infer_core.layers.rotary import RotaryEmbedding
from infer_core.loader.hf_config import (
    FULL_ATTENTION,
    SLIDING_ATTENTION,
    head_dim_of,
    layer_types,
    rope_spec,
)
from infer_core.models.base import CausalLM, ModelContext

# transformers' Gemma3TextConfig defaults, for Hub configs that leave them out.
HF_DEFAULTS = {
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "sliding_window_pattern": 6,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
}

# Checkpoint prefixes of the language model inside multimodal Gemma 3 checkpoints.
LANGUAGE_MODEL_PREFIXES = ("model.language_model.", "language_model.model.")


def with_defaults(hf_config: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(hf_config)
    for key, value in HF_DEFAULTS.items():
        if cfg.get(key) is None:
            cfg[key] = value
    return cfg


@dataclass(frozen=True)
class Gemma3Args:
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
    query_pre_attn_scalar: float
    layer_types: tuple[str, ...]
    sliding_window: int | None
    final_logit_softcapping: float | None

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> Gemma3Args:
        if cfg.get("use_bidirectional_attention"):
            raise ConfigError(
                "Gemma 3 with use_bidirectional_attention (an embedding model) is not a causal "
                "language model; Gemma3ForCausalLM needs use_bidirectional_attention false."
            )
        return cls(
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            num_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            head_dim=head_dim_of(cfg),
            vocab_size=cfg["vocab_size"],
            rms_norm_eps=cfg["rms_norm_eps"],
            hidden_act=cfg["hidden_activation"],
            attention_bias=cfg.get("attention_bias", False),
            tie_word_embeddings=cfg["tie_word_embeddings"],
            query_pre_attn_scalar=cfg["query_pre_attn_scalar"],
            layer_types=tuple(layer_types(cfg)),
            sliding_window=cfg.get("sliding_window"),
            final_logit_softcapping=cfg.get("final_logit_softcapping"),
        )


class Gemma3Attention(nn.Module):
    def __init__(
        self, args: Gemma3Args, rotary: RotaryEmbedding, ctx: ModelContext, sliding_window: int | None
    ) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(
            args.hidden_size, args.head_dim, args.num_heads, args.num_kv_heads, bias=args.attention_bias, tp=ctx.tp
        )
        self.q_size, self.kv_size = self.qkv_proj.sizes[0], self.qkv_proj.sizes[1]  # this rank's heads
        self.o_proj = RowParallelLinear(
            args.num_heads * args.head_dim, args.hidden_size, bias=args.attention_bias, tp=ctx.tp
        )
        self.q_norm = RMSNorm(args.head_dim, args.rms_norm_eps, gemma=True)
        self.k_norm = RMSNorm(args.head_dim, args.rms_norm_eps, gemma=True)
        self.rotary = rotary
        layer = AttentionLayer(
            self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, args.head_dim, args.query_pre_attn_scalar**-0.5,
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


class Gemma3DecoderLayer(nn.Module):
    """Sandwich norms: each sub-block's output is normed again before the residual add."""

    def __init__(
        self, args: Gemma3Args, rotary: RotaryEmbedding, ctx: ModelContext, sliding_window: int | None
    ) -> None:
        super().__init__()
        self.self_attn = Gemma3Attention(args, rotary, ctx, sliding_window)
        self.mlp = GatedMLP(args.hidden_size, args.intermediate_size, args.hidden_act, bias=False, tp=ctx.tp)
        size, eps = args.hidden_size, args.rms_norm_eps
        self.input_layernorm = RMSNorm(size, eps, gemma=True)
        self.post_attention_layernorm = RMSNorm(size, eps, gemma=True)
        self.pre_feedforward_layernorm = RMSNorm(size, eps, gemma=True)
        self.post_feedforward_layernorm = RMSNorm(size, eps, gemma=True)

    def forward(
        self, positions: torch.Tensor, h: torch.Tensor, residual: torch.Tensor | None, md: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(post_feedforward_out, residual)``; the layer's hidden state is their sum,
        which the next norm forms in the same pass (fused add + RMSNorm)."""
        h, residual = self.self_attn(positions, h, residual, self.input_layernorm, md)
        h = self.post_attention_layernorm(h)
        h, residual = self.mlp(h, residual, self.pre_feedforward_layernorm)
        return self.post_feedforward_layernorm(h), residual


class Gemma3Model(nn.Module):
    def __init__(self, args: Gemma3Args, hf_config: dict[str, Any], ctx: ModelContext) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(args.vocab_size, args.hidden_size, ctx.tp)
        # A buffer so that it takes the model's dtype: transformers rounds sqrt(hidden_size)
        # to the hidden dtype before the multiply (34.0, not 33.94, in bfloat16 at 1152).
        self.register_buffer("embed_scale", torch.tensor(args.hidden_size**0.5), persistent=False)
        rotary = {
            kind: RotaryEmbedding(args.head_dim, rope_spec(hf_config, kind), ctx.max_model_len)
            for kind in (SLIDING_ATTENTION, FULL_ATTENTION)
        }
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(
                args, rotary[kind], ctx, args.sliding_window if kind == SLIDING_ATTENTION else None
            )
            for kind in args.layer_types
        )
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, gemma=True)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        h, residual = h * self.embed_scale.to(h.dtype), None
        for layer in self.layers:
            h, residual = layer(positions, h, residual, md)
        return self.norm(h, residual)[0]


class Gemma3ForCausalLM(CausalLM):
    packed_modules = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, hf_config: dict[str, Any], ctx: ModelContext) -> None:
        super().__init__(hf_config, ctx)
        cfg = with_defaults(hf_config)
        self.args = Gemma3Args.from_hf(cfg)
        self.model = Gemma3Model(self.args, cfg, ctx)
        self.lm_head = ParallelLMHead(self.args.vocab_size, self.args.hidden_size, ctx.tp)
        if self.args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.lm_head(hidden if indices is None else hidden[indices])
        cap = self.args.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def map_weight_name(self, name: str) -> str | None:
        if "rotary_emb." in name:
            return None
        for prefix in LANGUAGE_MODEL_PREFIXES:
            if name.startswith(prefix):
                name = "model." + name.removeprefix(prefix)
        if name == "language_model.lm_head.weight":
            name = "lm_head.weight"
        if name == "lm_head.weight" and self.args.tie_word_embeddings:
            return None
        return name
