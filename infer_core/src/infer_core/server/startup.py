"""What ``infer-serve`` logs at start: one line per plugin, then the KV cache's capacity."""

from __future__ import annotations

from infer_core.attention.kv_tensors import kv_bytes_per_token
from infer_core.engine.llm_engine import LLMEngine
from infer_core.plugins import InferPluginManager

GIB = 1 << 30


def plugin_lines(pm: InferPluginManager) -> list[str]:
    """``plugin <name> (<distribution> <version>): <kind> <names>; ...`` for each plugin."""
    lines = []
    for name, status in pm.statuses.items():
        info = status.info
        dist = f"{info.distribution or 'no distribution'}{' ' + info.version if info.version else ''}"
        if status.state != "loaded":
            lines.append(f"plugin {name} ({dist}): {status.state}"
                         f"{': ' + status.error if status.error else ''}")
            continue
        parts = [f"{kind} {', '.join(spec.name for spec in specs)}"
                 for kind, specs in pm.registrations(name).items() if specs]
        lines.append(f"plugin {name} ({dist}): {'; '.join(parts) or 'registers nothing'}")
    return lines


def capacity_line(engine: LLMEngine) -> str:
    layout = engine.layout
    tokens = layout.num_blocks * layout.block_size
    size = kv_bytes_per_token(engine.model, layout.kv_dtype) * tokens / GIB
    dtype = str(layout.kv_dtype).removeprefix("torch.")
    return (f"KV cache: {layout.num_blocks} blocks x {layout.block_size} tokens = {tokens} tokens "
            f"({size:.2f} GiB {dtype} on {layout.device}, {engine.config.cache.backend} backend); "
            f"max_model_len {layout.max_model_len}, so at least {tokens // layout.max_model_len} "
            f"full-length requests at once")
