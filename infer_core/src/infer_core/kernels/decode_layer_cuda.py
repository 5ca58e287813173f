"""A batch-1 decode step of one Llama / Qwen 3 decoder layer as one persistent CUDA launch: the
CUDA C++ twin of :mod:`infer_core.kernels.decode_layer`, for what Triton cannot express
(thread-block clusters exchanging through distributed shared memory).

The source is ``kernels/cuda/decode_layer.cuh`` (its header says what each stage does); NVRTC
compiles it once per layer shape (:mod:`infer_core.kernels.nvrtc`, cached on disk) and the
driver launches it (:mod:`infer_core.kernels.cuda_launch`) on torch's stream, with PDL, where a
decode CUDA graph captures it. Two variants:

- ``grid``: six stages and five grid barriers, as the Triton layer;
- ``cluster``: qkv, attention and the merge of each KV head inside one cluster of ``cluster``
  CTAs (as many clusters as are resident; at least one per KV head), the rest grid-wide.

Same contract and numerics as :func:`infer_core.kernels.decode_layer.decode_layer` (checked
against ``decode_layer_ref`` on the GPU), bf16 only. Opt-in: ``INFER_DECODE_CUDA=grid`` or
``cluster`` makes ``model.persistent_decode`` launch this instead of the Triton layer
(:mod:`infer_core.layers.persistent_decode`). On an H200 it is 1.8x slower than the Triton layer
(Qwen3-0.6B: 37 µs per layer against 20.5, ``benchmarks/hopper/decode_layer.cu``;
benchmarks/reports/hopper-2026-12-04-h200/NOTES.md), hence opt-in.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from infer_core.attention.metadata import AttentionMetadata
from infer_core.errors import ConfigError, CudaSourceError
from infer_core.kernels.cuda_launch import CudaKernel, LaunchConfig
from infer_core.kernels.decode_layer import DecodeLayerWeights
from infer_core.kernels.pdl import use_pdl

SOURCE_DIR = Path(__file__).parent / "cuda"
THREADS = 256
MAX_SPLITS = 32  # kMaxSplits
MAX_ROWS = 256  # the row sums a CTA holds (acc[256])
VARIANTS = ("grid", "cluster")
SWITCHES = ("DL_REDUCE", "DL_KEEP_RES", "DL_MERGE", "DL_EARLY")  # decode_layer.cuh's compile-time variants
_POINTERS = ("w_qkv", "w_o", "w_gu", "w_down", "norm1", "norm2", "q_norm", "k_norm", "k_cache", "v_cache",
             "block_table", "positions", "slot_mapping", "seq_lens", "cos", "sin", "x", "res", "x_out", "res_out",
             "qkv", "partials", "attn", "r", "r2", "act", "sync", "errors")


class DecodeParams(ctypes.Structure):
    """``Params`` of decode_layer.cuh, field for field (a CPU test compares the offsets)."""

    _fields_ = [*((name, ctypes.c_void_p) for name in _POINTERS),
                ("eps", ctypes.c_float), ("block_size", ctypes.c_int), ("splits", ctypes.c_int),
                ("pos64", ctypes.c_int), ("slot64", ctypes.c_int), ("poll_ns", ctypes.c_uint)]


@dataclass(frozen=True)
class LayerShape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    qk_norm: bool

    def defines(self) -> list[str]:
        """The NVRTC options that fix the kernel's shape."""
        values = (self.hidden, self.intermediate, self.heads, self.kv_heads, self.head_dim, int(self.qk_norm))
        names = ("DL_HIDDEN", "DL_INTER", "DL_HEADS", "DL_KV_HEADS", "DL_HEAD_DIM", "DL_QK_NORM")
        return [f"-D{n}={v}" for n, v in zip(names, values, strict=True)]

    @property
    def qkv_rows(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.head_dim


def variant_from_env() -> str | None:
    """``INFER_DECODE_CUDA``: ``grid`` (or ``1``) / ``cluster`` / unset or ``0`` (the Triton layer)."""
    value = os.environ.get("INFER_DECODE_CUDA", "").strip().lower()
    if value in ("", "0"):
        return None
    if value == "1":
        return "grid"
    if value not in VARIANTS:
        raise ConfigError(f"INFER_DECODE_CUDA={value!r} is not a variant of the CUDA decode layer: use grid, "
                          "cluster or 0.")
    return value


def cluster_from_env() -> int:
    """``INFER_DECODE_CLUSTER``: the cluster variant's CTAs per cluster (16 by default)."""
    value = os.environ.get("INFER_DECODE_CLUSTER", "16")
    if not value.isdigit() or int(value) not in (2, 4, 8, 16):
        raise ConfigError(f"INFER_DECODE_CLUSTER={value!r}: use 2, 4, 8 or 16 CTAs per cluster.")
    return int(value)


def switches_from_env() -> tuple[str, ...]:
    """``INFER_DECODE_CUDA_SWITCHES``: the kernel's compile-time switches (decode_layer.cuh's header:
    ``DL_REDUCE``, ``DL_KEEP_RES``, ``DL_MERGE``, ``DL_EARLY``) as ``NAME=INT`` pairs, comma-separated, e.g.
    ``DL_REDUCE=0,DL_KEEP_RES=0``; NVRTC gets them as ``-D`` options."""
    value = os.environ.get("INFER_DECODE_CUDA_SWITCHES", "").strip()
    out = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, _, number = part.partition("=")
        if name not in SWITCHES or not number.isdigit():
            raise ConfigError(f"INFER_DECODE_CUDA_SWITCHES: {part!r} is not a switch of the CUDA decode layer: write "
                              f"NAME=INT with NAME one of {', '.join(SWITCHES)}, e.g. DL_REDUCE=0,DL_KEEP_RES=0.")
        out.append(f"-D{name}={int(number)}")
    return tuple(out)


def unsupported(shape: LayerShape, dtype: torch.dtype) -> str | None:
    """Why the kernel cannot take this layer shape, or ``None``."""
    group = shape.heads // max(shape.kv_heads, 1)
    if dtype != torch.bfloat16:
        return f"{dtype} activations (the CUDA layer is bf16 only)"
    if shape.heads % shape.kv_heads or group + 1 > THREADS // 32:
        return f"{shape.heads} query heads over {shape.kv_heads} KV heads"
    if shape.head_dim % 64 or shape.head_dim > 256:
        return f"head dim {shape.head_dim} (a multiple of 64, at most 256)"
    if shape.hidden % 256 or shape.intermediate % 256 or (shape.heads * shape.head_dim) % 256:
        return "hidden, intermediate and query widths that are not multiples of 256"
    return None


def _cluster_fits(shape: LayerShape, size: int) -> bool:
    """A cluster of ``size`` CTAs splits one KV head's qkv rows and its head dims evenly over
    its CTAs (at most ``MAX_ROWS`` rows each) and holds every split's partial."""
    head_rows = (shape.heads // shape.kv_heads + 2) * shape.head_dim
    return head_rows % size == 0 and head_rows // size <= MAX_ROWS and shape.head_dim % size == 0 and size <= 16


class CudaDecodeLayer:
    """The compiled kernel for one layer shape on one device, its launch configuration and its
    workspace (barrier counters, scratch); call it per layer."""

    def __init__(self, shape: LayerShape, device: torch.device, variant: str = "grid", *,
                 dtype: torch.dtype = torch.bfloat16, cluster: int = 16, poll_ns: int = 100,
                 switches: tuple[str, ...] = ()) -> None:
        reason = unsupported(shape, dtype)
        if reason is not None:
            raise CudaSourceError(f"the CUDA decode layer cannot take this model: {reason}.")
        if variant not in VARIANTS:
            raise CudaSourceError(f"unknown CUDA decode layer variant {variant!r}: use grid or cluster.")
        self.shape, self.variant, self.poll_ns = shape, variant, poll_ns
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        source = (SOURCE_DIR / "decode_layer.cuh").read_text()
        options = [f"--include-path={SOURCE_DIR}", *shape.defines(), *switches]
        self.kernel = CudaKernel.from_source(source, f"decode_layer_{variant}", [DecodeParams], options=options)
        sizer = CudaKernel.from_source(source, "decode_layer_smem_bytes", ["ptr"], options=options)
        answer = torch.zeros(1, dtype=torch.int32, device=self.device)
        sizer(LaunchConfig(grid=1, block=1), answer)
        self.shared_mem = int(answer.item())
        sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        if variant == "grid":
            per_sm = min(2, self.kernel.max_blocks_per_sm(THREADS, self.shared_mem, index))
            if per_sm < 1:
                raise CudaSourceError(f"the CUDA decode layer does not fit on an SM ({self.shared_mem} bytes of "
                                      "shared memory).")
            ctas = sms * per_sm
            self.config = LaunchConfig(grid=ctas, block=THREADS, shared_mem=self.shared_mem)
            self.splits = min(MAX_SPLITS, ctas // shape.kv_heads)
        else:
            if not _cluster_fits(shape, cluster):
                raise CudaSourceError(f"clusters of {cluster} CTAs do not fit this layer shape: try another "
                                      "INFER_DECODE_CLUSTER or the grid variant.")
            probe = LaunchConfig(grid=cluster, block=THREADS, shared_mem=self.shared_mem, cluster=cluster)
            clusters = self.kernel.max_active_clusters(probe, index)
            if clusters < shape.kv_heads:
                raise CudaSourceError(f"only {clusters} clusters of {cluster} CTAs are resident at once, one per KV "
                                      f"head needs {shape.kv_heads}: use the grid variant.")
            ctas = clusters * cluster
            self.config = LaunchConfig(grid=ctas, block=THREADS, shared_mem=self.shared_mem, cluster=cluster)
            self.splits = cluster
        rows = max(-(-shape.qkv_rows // ctas), 2 * -(-shape.intermediate // ctas), -(-shape.hidden // ctas))
        if rows > MAX_ROWS:
            raise CudaSourceError(f"{ctas} CTAs would each hold {rows} rows of a projection (at most {MAX_ROWS}).")
        self.ctas = ctas
        h = shape.hidden
        sizes = (shape.qkv_rows, MAX_SPLITS * shape.heads * (shape.head_dim + 2), shape.heads * shape.head_dim, h, h,
                 shape.intermediate)  # qkv, partials, attn, r, r2, act (float32)
        self.scratch = torch.zeros(sum(sizes), dtype=torch.float32, device=self.device)
        self.sync = torch.zeros(8, dtype=torch.int32, device=self.device)  # the epoch, five barrier counters
        self.errors = torch.zeros(1, dtype=torch.int32, device=self.device)  # barrier time-outs
        self._scratch = [region.data_ptr() for region in self.scratch.split(sizes)]

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None, weights: DecodeLayerWeights,
                 kv_cache: torch.Tensor, metadata: AttentionMetadata, positions: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``, ``residual [1, H]`` (``None`` for the first layer) → ``(mlp_out, new_residual)``,
        the step's K/V stored into ``kv_cache`` (``[2, blocks, block_size, Hkv, D]``) at
        ``metadata.slot_mapping[0]``; ``cos`` / ``sin`` ``[positions, D/2]`` float32."""
        shape = self.shape
        assert x.shape == (1, shape.hidden) and x.dtype == torch.bfloat16 and x.is_contiguous(), x.shape
        assert kv_cache.is_contiguous() and kv_cache.shape[0] == 2 and kv_cache.dtype == torch.bfloat16
        assert cos.dtype == torch.float32 and cos.is_contiguous() and sin.is_contiguous()
        assert metadata.seq_lens.dtype == torch.int32 and metadata.block_tables.dtype == torch.int32
        out, res_out = torch.empty_like(x), torch.empty_like(x)
        p = DecodeParams()
        tensors = {"w_qkv": weights.qkv, "w_o": weights.o, "w_gu": weights.gate_up, "w_down": weights.down,
                   "norm1": weights.input_norm, "norm2": weights.post_norm, "q_norm": weights.q_norm,
                   "k_norm": weights.k_norm, "k_cache": kv_cache[0], "v_cache": kv_cache[1],
                   "block_table": metadata.block_tables[0], "positions": positions,
                   "slot_mapping": metadata.slot_mapping, "seq_lens": metadata.seq_lens, "cos": cos, "sin": sin,
                   "x": x, "res": residual, "x_out": out, "res_out": res_out, "sync": self.sync,
                   "errors": self.errors}
        for name, t in tensors.items():
            setattr(p, name, t.data_ptr() if t is not None else None)
        p.qkv, p.partials, p.attn, p.r, p.r2, p.act = self._scratch
        p.eps, p.block_size, p.splits = weights.eps, metadata.block_size, self.splits
        p.pos64, p.slot64 = int(positions.dtype == torch.int64), int(metadata.slot_mapping.dtype == torch.int64)
        p.poll_ns = self.poll_ns
        self.kernel(replace(self.config, pdl=use_pdl(x)), p)
        return out, res_out
