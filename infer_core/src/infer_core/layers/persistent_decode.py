"""Batch-1 decode steps of a Llama / Qwen 3 decoder stack as one persistent launch per layer
(:mod:`infer_core.kernels.decode_layer`): ``model.persistent_decode``, on by default with a
CUDA device.

A model holds one :class:`PersistentDecode` (a plain attribute, not a submodule) and, in
``forward``, hands it the step when :meth:`PersistentDecode.applies` (the switch on, one
token, a decode, the stack checked once by :meth:`PersistentDecode.prepare`); each decoder
layer describes its tensors with :func:`decoder_layer_weights`. The launch stores
the step's K/V into the layer's cache itself (the standard ``[2, blocks, block_size, Hkv, D]``
layout) and attends without the attention backend, so the first call checks what the kernel
needs (one tensor-parallel rank, no biases, SiLU, no sliding window or softcap, a cache of the
activations' dtype, RoPE over the whole head); a stack that does not qualify keeps the
ordinary path, with one log line saying why (a warning when the option was asked for, else
an info line).

On the CPU the kernel runs only under the Triton interpreter, stage by stage (tests).

``INFER_DECODE_CUDA=grid`` / ``cluster`` launches the CUDA C++ layer instead
(:mod:`infer_core.kernels.decode_layer_cuda`, bf16; ``INFER_DECODE_CLUSTER`` CTAs per cluster);
a stack or device it cannot take keeps the Triton layer, with a warning that says why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

from infer_core.attention.metadata import AttentionMetadata
from infer_core.errors import CudaSourceError
from infer_core.kernels.decode_layer import (
    DecodeLayerWeights,
    DecodeWorkspace,
    decode_layer,
    ignored_settings,
    layer_bytes,
    stage_programs_per_sm,
    supports,
)
from infer_core.kernels.decode_layer_cuda import (
    CudaDecodeLayer,
    LayerShape,
    cluster_from_env,
    switches_from_env,
    variant_from_env,
)
from infer_core.layers.attention import Attention
from infer_core.layers.linear import Linear
from infer_core.layers.norm import RMSNorm
from infer_core.layers.rotary import RotaryEmbedding

log = logging.getLogger(__name__)


def decoder_layer_weights(
    qkv_proj: Linear, o_proj: Linear, gate_up_proj: Linear, down_proj: Linear, act: str,
    input_norm: RMSNorm, post_norm: RMSNorm, q_norm: RMSNorm | None = None, k_norm: RMSNorm | None = None,
) -> tuple[DecodeLayerWeights | None, str | None]:
    """A decoder layer's tensors for the persistent launch, or ``(None, why not)``."""
    if act != "silu":
        return None, f"the {act} activation"
    if any(m.bias is not None for m in (qkv_proj, o_proj, gate_up_proj, down_proj)):
        return None, "projection biases"
    if input_norm.eps != post_norm.eps or (q_norm is not None and q_norm.eps != input_norm.eps):
        return None, "RMSNorms with different eps"
    if input_norm.gemma:
        return None, "Gemma's RMSNorm"
    weights = DecodeLayerWeights(
        qkv_proj.weight, o_proj.weight, gate_up_proj.weight, down_proj.weight, input_norm.weight, post_norm.weight,
        input_norm.eps, q_norm.weight if q_norm is not None else None, k_norm.weight if k_norm is not None else None,
    )
    return weights, None


# one decoder layer's description: (weights or None, why not, its attention module)
LayerDescription = tuple[DecodeLayerWeights | None, str | None, Attention]


def _shape(weights: DecodeLayerWeights | None, attn: Attention) -> tuple:
    """What the launches' shared scratch is sized by."""
    sizes = () if weights is None else tuple(t.shape for t in (weights.qkv, weights.o, weights.gate_up, weights.down))
    return sizes, attn.layer.num_heads, attn.layer.num_kv_heads, attn.layer.head_dim


class PersistentDecode:
    """The stack's batch-1 decode path; off until the engine switches it on."""

    def __init__(self, rotary: RotaryEmbedding, tp_size: int = 1) -> None:
        self.enabled = False
        self.explicit = False  # asked for by the configuration (not only the CUDA default)
        self.rotary = rotary
        self.tp_size = tp_size
        self._plan: list[tuple[DecodeLayerWeights, Attention]] | None = None
        self._workspace: DecodeWorkspace | None = None
        self._cuda: CudaDecodeLayer | None = None  # INFER_DECODE_CUDA: the CUDA C++ layer instead of Triton's
        self._rope32: tuple[torch.Tensor, torch.Tensor] | None = None
        self._on_cuda = False  # the stack prepared on a CUDA device (else the interpreter's stage-by-stage path)
        # each stage of a layer its own launch (large layers, or INFER_DECODE_STAGES): set by prepare, from the
        # stack's layer size
        self.stages = False

    @property
    def active(self) -> bool:
        """Switched on and the stack checked: batch-1 decode steps run here."""
        return self.enabled and self._plan is not None

    @property
    def launches_per_step(self) -> int | None:
        """The decoder stack's launches per batch-1 decode step (six per layer stage by stage,
        as in the Triton interpreter; else one per layer), or ``None`` before :meth:`prepare`."""
        if self._plan is None:
            return None
        if self.stages or not self._on_cuda:  # (the interpreter runs stage by stage)
            return 6 * len(self._plan)
        return len(self._plan)

    @property
    def launch_kind(self) -> int | None:
        """The ``group_sync`` the Triton layer's one-launch layers took (a
        :class:`DecodeWorkspace`'s kind), or ``None`` before the first one ran."""
        return None if self._workspace is None else self._workspace.kind

    def applies(self, h: torch.Tensor, md: AttentionMetadata,
                describe: Callable[[], Sequence[LayerDescription]]) -> bool:
        """Whether this step (embedded tokens ``h``) runs here: switched on, one decode token,
        on a CUDA device (or the Triton interpreter), and the stack (``describe()``, asked
        once) qualifies."""
        if not self.enabled or h.shape[0] != 1 or md.max_query_len != 1:
            return False
        if not (h.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
            return False
        return self._plan is not None or self.prepare(describe(), h)

    def prepare(self, layers: Sequence[LayerDescription], h: torch.Tensor) -> bool:
        """Check the stack once; switch off with a log line when it does not qualify."""
        reason = "tensor parallelism" if self.tp_size > 1 else None
        first = _shape(layers[0][0], layers[0][2])
        for weights, why, attn in layers:
            reason = reason or why or self._why_not(weights, attn, first, h.dtype)
        if reason is not None:
            log.log(logging.WARNING if self.explicit else logging.INFO,
                    "model.persistent_decode: off for this model (%s); batch-1 decode takes the usual path", reason)
            self.enabled = False
            return False
        self._plan = [(weights, attn) for weights, _, attn in layers]
        for sentence in ignored_settings():
            log.warning("model.persistent_decode: %s.", sentence)
        self._on_cuda = h.is_cuda
        self.stages = bool(stage_programs_per_sm(layer_bytes(self._plan[0][0])))
        log.info("model.persistent_decode: batch-1 decode steps run %d decoder layers as %s", len(self._plan),
                 "six launches each (stage by stage)" if self.stages else "one launch each")
        w, layer0 = self._plan[0][0], self._plan[0][1].layer
        self._workspace = DecodeWorkspace(w.o.shape[0], w.down.shape[1], layer0.num_heads, layer0.num_kv_heads,
                                          layer0.head_dim, None, h.dtype, h.device)
        variant = variant_from_env()
        if variant is not None and h.is_cuda:
            shape = LayerShape(w.o.shape[0], w.down.shape[1], layer0.num_heads, layer0.num_kv_heads, layer0.head_dim,
                               w.q_norm is not None)
            try:
                self._cuda = CudaDecodeLayer(shape, h.device, variant, dtype=h.dtype, cluster=cluster_from_env(),
                                             switches=switches_from_env())
                # float32 tables (a model cast to bf16 casts its buffers too; the kernel reads float32)
                self._rope32 = (self.rotary.cos.float().contiguous(), self.rotary.sin.float().contiguous())
                log.info("model.persistent_decode: the CUDA C++ layer (%s, %d CTAs)", variant, self._cuda.ctas)
            except CudaSourceError as e:
                log.warning("INFER_DECODE_CUDA=%s: %s Batch-1 decode keeps the Triton layer.", variant, e)
        return True

    def _why_not(self, weights: DecodeLayerWeights, attn: Attention, first: tuple, dtype: torch.dtype) -> str | None:
        """Why the kernel cannot take this layer (its cache and rotary included), or ``None``."""
        cache = attn.kv_cache
        half = self.rotary.cos.shape[-1]
        unsupported = supports(attn.layer, cache, dtype)
        if unsupported is not None:
            return unsupported
        if _shape(weights, attn) != first:
            return "layers of different shapes"
        if attn.kv_scales is not None:
            return "an FP8 KV cache"
        if cache.dim() != 5 or cache.shape[0] != 2:
            return f"a KV cache of shape {tuple(cache.shape)}"
        if 2 * half != attn.layer.head_dim:
            return f"partial rotary ({2 * half} of {attn.layer.head_dim})"
        return None

    def __call__(self, h: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder stack over one token: ``(mlp_out, residual)`` of the last layer."""
        residual = None
        if self._cuda is not None:
            for weights, attn in self._plan:
                h, residual = self._cuda(h, residual, weights, attn.kv_cache, md, positions, *self._rope32)
            return h, residual
        # the interpreter (a spin barrier cannot open there), or large layers / INFER_DECODE_STAGES: each stage its
        # own launch
        staged = not h.is_cuda or self.stages
        for weights, attn in self._plan:
            h, residual = decode_layer(h, residual, weights, attn.layer, attn.kv_cache, md, positions,
                                       self.rotary.cos, self.rotary.sin, self._workspace, stage_by_stage=staged)
        return h, residual


def enable_persistent_decode(model: nn.Module, explicit: bool = True) -> int:
    """Switch on every :class:`PersistentDecode` of ``model`` (an attribute of one of its
    modules); returns how many there are. ``explicit``: the configuration asked for it (a stack
    that does not qualify then says so as a warning)."""
    paths = [p for m in model.modules() for p in vars(m).values() if isinstance(p, PersistentDecode)]
    for path in paths:
        path.enabled = True
        path.explicit = explicit
    return len(paths)
