"""Reading a Hugging Face ``config.json``, including both RoPE styles.

Checkpoints on the Hub write ``rope_theta`` and ``rope_scaling`` (``type`` or ``rope_type``);
transformers 5 saves ``rope_parameters`` — one dict, or one per layer type (Gemma 3:
``{"sliding_attention": {...}, "full_attention": {...}}``). :func:`rope_spec` reads all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infer_core.errors import ConfigError

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


def read_hf_config(model_dir: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a model directory, with a clear error if it is missing."""
    path = Path(model_dir).expanduser() / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"'{Path(model_dir)}' is not a Hugging Face model directory: it has no config.json "
            f"(set model.path to a directory with config.json, *.safetensors and tokenizer.json)."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"'{path}' is not valid JSON: {exc}.") from None


def architecture_of(hf_config: dict[str, Any], source: str = "config.json") -> str:
    archs = hf_config.get("architectures") or []
    if not archs:
        raise ConfigError(f"{source} has no 'architectures' entry, so the model class is unknown.")
    return archs[0]


@dataclass(frozen=True)
class RopeSpec:
    """How rotary position embeddings are computed for one layer type."""

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None


SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_spec(hf_config: dict[str, Any], layer_type: str | None = None) -> RopeSpec:
    """The RoPE parameters of ``layer_type`` (``None`` for models with one kind of layer)."""
    params = hf_config.get("rope_parameters")
    if isinstance(params, dict) and layer_type is not None and layer_type in params:
        params = params[layer_type]
    elif isinstance(params, dict) and FULL_ATTENTION in params:
        params = params[FULL_ATTENTION]
    if not params:  # Hub style
        params = dict(hf_config.get("rope_scaling") or {})
        theta = hf_config.get("rope_theta", 10000.0)
        if layer_type == SLIDING_ATTENTION and "rope_local_base_freq" in hf_config:
            params, theta = {}, hf_config["rope_local_base_freq"]  # Gemma 3 local layers
        params.setdefault("rope_theta", theta)
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"RoPE type '{rope_type}' is not supported (supported: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)})."
        )
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConfigError("partial rotary embeddings (partial_rotary_factor < 1) are not supported.")
    if rope_type == "llama3" and not params.get("original_max_position_embeddings"):
        raise ConfigError("llama3 RoPE scaling needs original_max_position_embeddings in config.json.")
    return RopeSpec(
        theta=float(params["rope_theta"]),
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=params.get("original_max_position_embeddings"),
    )


def layer_types(hf_config: dict[str, Any]) -> list[str]:
    """``full_attention`` / ``sliding_attention`` per layer (all full without a window)."""
    n = hf_config["num_hidden_layers"]
    if hf_config.get("layer_types"):
        return list(hf_config["layer_types"])
    pattern = hf_config.get("sliding_window_pattern") or hf_config.get("_sliding_window_pattern")
    if hf_config.get("sliding_window") and pattern:
        return [FULL_ATTENTION if (i + 1) % pattern == 0 else SLIDING_ATTENTION for i in range(n)]
    return [FULL_ATTENTION] * n


def head_dim_of(hf_config: dict[str, Any]) -> int:
    return hf_config.get("head_dim") or hf_config["hidden_size"] // hf_config["num_attention_heads"]
