"""``infer debug diff``: where does our model depart from transformers, layer by layer?

Runs one prompt through our model (the engine's call path: cache backend, KV tensors, flat
batch) and through transformers with the same weights, and reports for every decoder layer
and for the logits the max absolute error and the error relative to the reference's largest
value. transformers is needed only here (it is in the ``test`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from infer_core.errors import InferError
from infer_core.loader.model import DTYPES


@dataclass(frozen=True)
class LayerDiff:
    name: str
    max_abs: float
    max_rel: float


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList):
            return module
    raise InferError(f"{type(model).__name__} has no decoder 'layers' list to compare.")


def _capture(layers: nn.ModuleList, into: list[torch.Tensor], residual_pairs: bool = False) -> list:
    """Record each layer's hidden state. Our decoder layers return ``(out, residual)`` (the
    next norm adds them in one pass): with ``residual_pairs`` the state is their sum, else the
    output itself (or the first item of transformers' tuple)."""
    def hook(_module, _args, output):
        if residual_pairs and isinstance(output, tuple):
            tensor = output[0] + output[1]
        else:
            tensor = output[0] if isinstance(output, tuple) else output
        into.append(tensor.detach().reshape(-1, tensor.shape[-1]).float())

    return [layer.register_forward_hook(hook) for layer in layers]


def _diff(name: str, ours: torch.Tensor, ref: torch.Tensor) -> LayerDiff:
    err = (ours.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item() or 1.0
    return LayerDiff(name, err, err / scale)


def diff_against_transformers(model_dir: str | Path, token_ids: list[int], dtype: str = "float32") -> list[LayerDiff]:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - the test extra has it
        raise InferError("infer debug diff needs transformers: pip install 'infer-core[test]'.") from exc
    from infer_core.testing.runner import PromptRunner, load_for_test

    torch_dtype = DTYPES[dtype]
    max_len = max(len(token_ids), 16)
    ours = load_for_test(model_dir, dtype=torch_dtype, max_model_len=max_len)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch_dtype, attn_implementation="eager").eval()
    ours_out: list[torch.Tensor] = []
    ref_out: list[torch.Tensor] = []
    handles = _capture(_decoder_layers(ours), ours_out, residual_pairs=True) + _capture(_decoder_layers(ref), ref_out)
    try:
        logits = PromptRunner(ours, max_model_len=max_len, num_blocks=1).prompt_logits([token_ids])[0]
        with torch.inference_mode():
            ref_logits = ref(torch.tensor([token_ids])).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    rows = [_diff(f"layer {i}", o, r) for i, (o, r) in enumerate(zip(ours_out, ref_out, strict=True))]
    rows.append(_diff("logits", logits, ref_logits))
    return rows


def format_diff(rows: list[LayerDiff]) -> str:
    lines = [f"{'':<10} {'max abs err':>12} {'max rel err':>12}"]
    lines += [f"{r.name:<10} {r.max_abs:>12.3e} {r.max_rel:>12.3e}" for r in rows]
    return "\n".join(lines)


def encode_prompt(model_dir: str | Path, prompt: str) -> list[int]:
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise InferError(f"'{model_dir}' has no tokenizer.json; pass --token-ids instead of --prompt.")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).encode(prompt).ids
