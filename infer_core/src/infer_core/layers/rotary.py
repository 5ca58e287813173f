"""Rotary position embeddings from a positions vector (any per-token positions: batched
decode and prefill chunks alike), with default, linear and ``llama3`` frequency scaling.
On CUDA the rotation runs in place through the Triton kernel (one launch for q and k), and
``forward_with_qk_norm`` folds the per-head QK-norm before it into the same launch. Either
kernel can also store the step's K/V into the KV cache in that launch (``kv``, a
:class:`~infer_core.kernels.kv_cache_write.KVWrite`), when :meth:`RotaryEmbedding.kernel_applies`
(the attention layer's ``forward_rope`` asks it first)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from infer_core.layers.norm import RMSNorm
from infer_core.loader.hf_config import RopeSpec

if TYPE_CHECKING:
    from infer_core.kernels.kv_cache_write import KVWrite


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

    # Where the Triton kernels run (the CPU tests under TRITON_INTERPRET=1 add "cpu").
    kernel_devices: ClassVar[frozenset[str]] = frozenset({"cuda"})

    def __init__(self, head_dim: int, spec: RopeSpec, max_positions: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32),
                            inv_frequencies(spec, head_dim))
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def kernel_applies(
        self, q: torch.Tensor, k: torch.Tensor, q_norm: RMSNorm | None = None, k_norm: RMSNorm | None = None
    ) -> bool:
        """Whether :meth:`forward` (no norms) or :meth:`forward_with_qk_norm` (both norms) runs
        its Triton kernel for these ``q [T, Hq, D]`` and ``k [T, Hkv, D]`` — the only path that
        accepts a fused KV write: on a device of ``kernel_devices``, unit last strides, and for the
        QK-norm kernel q, k and both weights of one dtype and both norms with one eps and one
        flavour."""
        on_kernel = q.device.type in self.kernel_devices and q.dim() == 3
        if not (on_kernel and q.stride(-1) == 1 and k.stride(-1) == 1):
            return False
        if q_norm is None or k_norm is None:
            return True
        return (q.dtype == k.dtype == q_norm.weight.dtype == k_norm.weight.dtype
                and (q_norm.eps, q_norm.gemma) == (k_norm.eps, k_norm.gemma))

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, kv: KVWrite | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k (in place on the kernel path). ``kv``: also store the rotated k and
        ``kv.v`` into the cache in the same launch; only where :meth:`kernel_applies`."""
        if self.kernel_applies(q, k):
            from infer_core.kernels.rotary import rotary_embedding

            rotary_embedding(positions, q, k, self.cos, self.sin, kv=kv)  # in place
            return q, k
        assert kv is None, "a fused KV write needs the CUDA kernel path (check kernel_applies first)"
        cos, sin = self.cos[positions], self.sin[positions]
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def forward_with_qk_norm(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, q_norm: RMSNorm, k_norm: RMSNorm,
        kv: KVWrite | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``self(positions, q_norm(q), k_norm(k))`` for ``q [T, Hq, D]``, ``k [T, Hkv, D]``
        (Qwen 3, Gemma 3). On CUDA one fused launch instead of three, in place on q and k;
        ``kv`` as in :meth:`forward`."""
        if self.kernel_applies(q, k, q_norm, k_norm):
            from infer_core.kernels.qk_norm_rope import qk_norm_rope

            qk_norm_rope(positions, q, k, q_norm.weight, k_norm.weight, self.cos, self.sin,
                         q_norm.eps, q_norm.gemma, kv=kv)
            return q, k
        assert kv is None, "a fused KV write needs the CUDA kernel path (check kernel_applies first)"
        return self(positions, q_norm(q), k_norm(k))
