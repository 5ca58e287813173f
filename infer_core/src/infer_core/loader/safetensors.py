"""Reading checkpoint tensors from safetensors files: single-file or sharded, memory-mapped,
cast to the configured dtype as they are read. Pickle checkpoints are refused."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from infer_core.errors import ModelLoadError

INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PROGRESS_MIN_BYTES = 256 * 1024 * 1024


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a model directory, in load order."""
    root = Path(model_dir)
    index = root / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [root / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(
                f"{INDEX_FILE} in '{root}' lists shards that are not there: {', '.join(missing)}."
            )
        return files
    files = sorted(root.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES) if root.is_dir() else []
    if pickles:
        raise ModelLoadError(
            f"'{root}' holds only pickle checkpoints ({', '.join(pickles)}), which infer refuses "
            f"to load because unpickling can run arbitrary code; convert them to safetensors "
            f"(transformers: model.save_pretrained(dir, safe_serialization=True))."
        )
    raise ModelLoadError(f"'{root}' has no *.safetensors weights.")


def iter_checkpoint(
    model_dir: str | Path, dtype: torch.dtype | None = None, *, progress: bool | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor, floating ones cast to ``dtype``. A progress
    line goes to stderr for checkpoints over 256 MiB (or when ``progress`` is true)."""
    files = checkpoint_files(model_dir)
    total = sum(f.stat().st_size for f in files)
    show = progress if progress is not None else total >= PROGRESS_MIN_BYTES
    done = 0
    seen: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name in seen:
                    raise ModelLoadError(
                        f"tensor '{name}' is in both {seen[name].name} and {path.name}."
                    )
                seen[name] = path
                tensor = f.get_tensor(name)
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                yield name, tensor
        done += path.stat().st_size
        if show:
            print(f"\rloading weights {100 * done // max(total, 1):3d}% "
                  f"({done / 2**30:.2f} / {total / 2**30:.2f} GiB)", end="", file=sys.stderr)
    if show:
        print(file=sys.stderr)
