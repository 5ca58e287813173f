"""Where infer keeps what it builds or fetches once: checkpoints (``infer_core.testing.fixtures``)
and compiled CUDA kernels (``infer_core.kernels.nvrtc``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The root of infer's cache: ``$INFER_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/infer``."""
    explicit = os.environ.get("INFER_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "infer"
