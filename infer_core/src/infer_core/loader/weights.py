"""Copying checkpoint tensors into a model, by the weight-name map beside each model.

Fused projections are stacked here: a checkpoint tensor whose module is in the model's
``packed_modules`` (``q_proj -> (qkv_proj, 0)``) is copied into its rows of the fused weight.
Every parameter (and every shard of a fused one) must be loaded exactly once; missing and
unexpected tensors fail with their names.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from infer_core.errors import ModelLoadError
from infer_core.layers.linear import MergedLinear

MAX_LISTED = 10


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" (and {len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def _packed_target(name: str, packed: dict[str, tuple[str, int]]) -> tuple[str, int | None]:
    for source, (target, shard) in packed.items():
        token = f".{source}."
        if token in name:
            return name.replace(token, f".{target}."), shard
    return name, None


def load_weights(model: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], source: str) -> None:
    """Load ``tensors`` (checkpoint names) into ``model`` (see module docstring)."""
    params = dict(model.named_parameters())
    packed: dict[str, tuple[str, int]] = getattr(model, "packed_modules", {})
    expected: set[tuple[str, int | None]] = set()
    for name in params:
        module = model.get_submodule(name.rpartition(".")[0])
        if isinstance(module, MergedLinear) and name.endswith(".weight"):
            expected.update((name, i) for i in range(len(module.sizes)))
        else:
            expected.add((name, None))
    loaded: set[tuple[str, int | None]] = set()
    unexpected: list[str] = []
    for hf_name, tensor in tensors:
        mapped = model.map_weight_name(hf_name)
        if mapped is None:
            continue
        name, shard = _packed_target(mapped, packed)
        param = params.get(name)
        if param is None:
            unexpected.append(hf_name)
            continue
        if (name, shard) in loaded:
            raise ModelLoadError(f"{source}: tensor '{hf_name}' is loaded twice (as {name}).")
        module = model.get_submodule(name.rpartition(".")[0])
        with torch.no_grad():
            if hasattr(module, "weight_loader"):  # a tensor-parallel layer keeps its rank's part
                _check_shape(hf_name, tensor, torch.Size(module.checkpoint_shape(param, shard)), source)
                module.weight_loader(param, tensor, shard)
            elif shard is None:
                _check_shape(hf_name, tensor, param.shape, source)
                param.copy_(tensor)
            else:
                rows = module.shard_rows(shard)
                _check_shape(hf_name, tensor, param[rows].shape, source)
                module.load_shard(param, tensor, shard)
        loaded.add((name, shard))
    if unexpected:
        raise ModelLoadError(
            f"{source} has tensors {type(model).__name__} does not use: {_listing(sorted(unexpected))}. "
            f"Check that config.json's architecture matches the weights."
        )
    missing = sorted(f"{n}[{s}]" if s is not None else n for n, s in expected - loaded)
    if missing:
        raise ModelLoadError(
            f"{source} is missing tensors {type(model).__name__} needs: {_listing(missing)}."
        )


def _check_shape(name: str, tensor: torch.Tensor, shape: torch.Size, source: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ModelLoadError(
            f"{source}: tensor '{name}' has shape {list(tensor.shape)} but the model expects "
            f"{list(shape)}; check that config.json matches the weights."
        )
