"""Random-weight checkpoints at real shapes, for speed work without downloading weights.

:func:`write_random_checkpoint` writes a Hugging Face model directory — ``config.json`` with
the public configuration values of the named model (written here by hand), one
``model.safetensors`` of random weights (normal, std 0.02; norm weights neutral) in bfloat16,
``generation_config.json`` and a tokenizer: a copy of a real one (``tokenizer_dir``, e.g. the
Qwen 3 tokenizer fixture for Qwen 3 shapes) or a synthetic byte-level BPE of exactly the
model's vocabulary size (:func:`infer_core.testing.fixtures.write_tiny_tokenizer`). Parameter
names and shapes come from transformers' own model class instantiated on the meta device, so
the checkpoint loads in transformers and in infer alike.

Speed figures on random weights are valid for everything but speculative decoding: the work
per token does not depend on the values (outputs are forced to their length by ``ignore_eos``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from infer_core.errors import ConfigError

_LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": True,
    "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": 128001,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
}


def _qwen3(hidden: int, intermediate: int, layers: int, heads: int) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "hidden_act": "silu", "tie_word_embeddings": True,
        "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": layers, "bos_token_id": 151643, "eos_token_id": 151645,
    }


_GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
    "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
    "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
    "vocab_size": 262144, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None,
    "sliding_window": 512, "sliding_window_pattern": 6,
    "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)],
    "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": None, "attn_logit_softcapping": None, "attention_bias": False,
    "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0,
}

# Public config.json values of each model (Hugging Face Hub), written by hand.
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": _LLAMA_32_1B,
    "qwen3-0.6b": _qwen3(1024, 3072, 28, 16),
    "qwen3-1.7b": _qwen3(2048, 6144, 28, 16),
    "qwen3-4b": _qwen3(2560, 9728, 36, 32),
    "gemma-3-1b": _GEMMA3_1B,
}
INIT_STD = 0.02


def shape_config(shape: str, **overrides: Any) -> dict[str, Any]:
    if shape not in SHAPES:
        raise ConfigError(f"no model shape named '{shape}'; choose one of {', '.join(SHAPES)}.")
    config = {**SHAPES[shape], **overrides, "torch_dtype": "bfloat16"}
    if "num_hidden_layers" in overrides and "layer_types" in config:
        n = overrides["num_hidden_layers"]
        config["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
    if "num_hidden_layers" in overrides and "max_window_layers" in config:
        config["max_window_layers"] = overrides["num_hidden_layers"]
    return config


def _parameter_shapes(out: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the parameters transformers' class has for ``out/config.json``
    (tied weights once), from an instance on the meta device."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(out)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def write_random_checkpoint(shape: str, out: str | Path, *, tokenizer_dir: str | Path | None = None,
                            seed: int = 0, device: str | None = None, **overrides: Any) -> Path:
    """Write a random bfloat16 checkpoint of ``shape`` into ``out`` (made if missing).

    ``overrides`` change config values (``num_hidden_layers=2`` for a quick test);
    ``tokenizer_dir`` is copied when given, else a synthetic tokenizer of the model's
    vocabulary is written; ``device`` makes the random numbers (default: CUDA if available).
    """
    import torch
    from safetensors.torch import save_file

    from infer_core.testing.fixtures import write_tiny_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = shape_config(shape, **overrides)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}, indent=2) + "\n")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    gemma = config["model_type"].startswith("gemma")
    tensors = {}
    for name, shape_ in _parameter_shapes(out).items():
        if "norm" in name:  # neutral norms: weight 1 (Gemma's (1 + w): 0)
            t = torch.zeros(shape_) if gemma else torch.ones(shape_)
        else:
            t = torch.randn(shape_, generator=gen, device=device, dtype=torch.float32).mul_(INIT_STD)
        tensors[name] = t.to(torch.bfloat16).cpu().contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copyfile(src, out / name)
    else:
        write_tiny_tokenizer(out, config["vocab_size"])
    record = {"shape": shape, "overrides": overrides, "seed": seed,
              "tokenizer": str(tokenizer_dir) if tokenizer_dir else "synthetic BPE",
              "weights": "random normal(0, 0.02), bfloat16"}
    (out / "random_checkpoint.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
