"""Building a model from a Hugging Face directory through the architecture registry."""

from __future__ import annotations

from pathlib import Path

import torch

from infer_core.errors import ModelLoadError
from infer_core.loader.hf_config import architecture_of, read_hf_config
from infer_core.loader.safetensors import iter_checkpoint
from infer_core.loader.weights import load_weights
from infer_core.models.base import CausalLM, ModelContext
from infer_core.plugins import InferPluginManager

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_model(
    model_dir: str | Path,
    pm: InferPluginManager,
    ctx: ModelContext,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> CausalLM:
    """Construct ``architectures[0]`` of ``config.json`` (looked up among installed
    architecture plugins) on ``device`` in ``dtype`` and load its safetensors weights."""
    root = Path(model_dir).expanduser()
    hf_config = read_hf_config(root)
    arch = architecture_of(hf_config, f"{root / 'config.json'}")
    cls = pm.architectures.get(arch, where=f"architectures in {root / 'config.json'}").load()
    if not (isinstance(cls, type) and issubclass(cls, CausalLM)):
        raise ModelLoadError(f"architecture '{arch}' does not resolve to a CausalLM subclass.")
    with torch.device(device):
        model = cls(hf_config, ctx)
    model.to(dtype=dtype)
    load_weights(model, iter_checkpoint(root, dtype), source=f"checkpoint '{root}'")
    return model.eval()
