"""Rotary position embeddings from a positions vector (any per-token positions: batched
decode and prefill chunks alike), with default, linear and ``llama3`` frequency scaling.
On CUDA the rotation runs in place through the Triton kernel (one launch for q and k), and
``forward_with_qk_norm`` folds the per-head QK-norm before it into the same launch."""

from __future__ import annotations

import math

import torch
from torch import nn

from infer_core.layers.norm import RMSNorm
from infer_core.loader.hf_config import RopeSpec


def inv_frequencies(spec: RopeSpec, rotary_dim: int) -> torch.Tensor:
    """The ``rotary_dim / 2`` inverse frequencies, in float32, as transformers computes them."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (spec.theta**exponents)
    if spec.rope_type == "linear":
        return inv_freq / spec.factor
    if spec.rope_type == "llama3":
        old_len = spec.original_max_position_embeddings
        low_wavelen = old_len / spec.low_freq_factor
        high_wavelen = old_len / spec.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / spec.factor, inv_freq)
        smooth = (old_len / wavelen - spec.low_freq_factor) / (
            spec.high_freq_factor - spec.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / spec.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [T, H, D]`` by half-split pairs (the Llama / ``rotate_half`` layout);
    ``cos``/``sin`` are ``[T, D/2]``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions ``0 .. max_positions-1``, applied to q and k."""

    def __init__(self, head_dim: int, spec: RopeSpec, max_positions: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32),
                            inv_frequencies(spec, head_dim))
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if q.is_cuda and q.dim() == 3 and q.stride(-1) == 1 and k.stride(-1) == 1:
            from infer_core.kernels.rotary import rotary_embedding

            rotary_embedding(positions, q, k, self.cos, self.sin)  # in place
            return q, k
        cos, sin = self.cos[positions], self.sin[positions]
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def forward_with_qk_norm(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, q_norm: RMSNorm, k_norm: RMSNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``self(positions, q_norm(q), k_norm(k))`` for ``q [T, Hq, D]``, ``k [T, Hkv, D]``
        (Qwen 3, Gemma 3). On CUDA one fused launch instead of three, in place on q and k."""
        if (
            q.is_cuda and q.dim() == 3 and q.stride(-1) == 1 and k.stride(-1) == 1
            and q.dtype == k.dtype == q_norm.weight.dtype == k_norm.weight.dtype
            and (q_norm.eps, q_norm.gemma) == (k_norm.eps, k_norm.gemma)
        ):
            from infer_core.kernels.qk_norm_rope import qk_norm_rope

            qk_norm_rope(positions, q, k, q_norm.weight, k_norm.weight, self.cos, self.sin,
                         q_norm.eps, q_norm.gemma)
            return q, k
        return self(positions, q_norm(q), k_norm(k))
