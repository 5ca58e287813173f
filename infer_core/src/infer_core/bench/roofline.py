"""The memory roofline of a decode step: bytes it must read over the measured bandwidth.

A decode step of ``B`` sequences with mean context ``C`` reads every weight once (the embedding
table only when it is tied to the LM head: otherwise a lookup reads ``B`` rows) and the K and V
of every cached token: ``bytes = weights + B · C · kv_bytes_per_token``. Its time is at least
``bytes / bandwidth``, with the bandwidth measured by a device-to-device copy (bytes read plus
bytes written, per second). Sliding-window layers are counted as full attention, so for Gemma 3
the bound is conservative. Prefill compute is not counted: for throughput workloads the bound
is the decode-only ceiling at the run's batch size.
"""

from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from infer_core.loader.hf_config import head_dim_of, read_hf_config

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1}
COPY_BYTES_CUDA = 1 << 30
COPY_BYTES_CPU = 1 << 26


@dataclass(frozen=True)
class ModelBytes:
    num_params: int
    weights_bytes: int  # read per decode step
    kv_bytes_per_token: int
    dtype: str

    def to_dict(self) -> dict:
        return asdict(self)


def _safetensors_params(model_dir: Path) -> dict[str, int]:
    """Element count of every tensor of the checkpoint, from the safetensors headers only."""
    counts: dict[str, int] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                counts[name] = math.prod(info["shape"])
    return counts


def model_bytes(model_dir: str | Path, dtype: str = "bfloat16", kv_dtype: str | None = None) -> ModelBytes:
    """Weights read per decode step and KV bytes per cached token, for ``dtype`` at run time."""
    model_dir = Path(model_dir)
    cfg = read_hf_config(model_dir)
    cfg = cfg.get("text_config", cfg)
    size = DTYPE_BYTES[dtype]
    counts = _safetensors_params(model_dir)
    total = sum(counts.values())
    embed = sum(n for name, n in counts.items() if name.endswith("embed_tokens.weight"))
    tied = cfg.get("tie_word_embeddings", False) or not any(n.endswith("lm_head.weight") for n in counts)
    read = total if tied else total - embed
    kv = 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) \
        * head_dim_of(cfg) * DTYPE_BYTES[kv_dtype or dtype]
    return ModelBytes(total, read * size, kv, dtype)


def decode_step_seconds(mb: ModelBytes, batch: float, context: float, bandwidth: float) -> float:
    return (mb.weights_bytes + batch * context * mb.kv_bytes_per_token) / bandwidth


def measure_copy_bandwidth(device: str = "cuda", repeats: int = 10) -> dict:
    """Device-to-device copy bandwidth (bytes read + written per second)."""
    import torch

    dev = torch.device(device)
    nbytes = COPY_BYTES_CUDA if dev.type == "cuda" else COPY_BYTES_CPU
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev).fill_(1)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            dst.copy_(src)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000.0
    else:
        t0 = time.perf_counter()
        for _ in range(repeats):
            dst.copy_(src)
        seconds = time.perf_counter() - t0
    return {"device": str(dev), "bytes_per_s": 2 * nbytes * repeats / seconds,
            "copy_bytes": nbytes, "repeats": repeats, "method": "dst.copy_(src), read + write"}
