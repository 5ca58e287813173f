"""infer: a fast LLM inference engine for small dense models.

The public API of ``infer_core``. Everything a plugin needs is importable from here or from
the modules named in ``docs/plugins.md``.
"""

from __future__ import annotations

import pluggy

from infer_core.version import PLUGIN_API_VERSION, __version__

hookimpl = pluggy.HookimplMarker("infer")

_LAZY = {
    "LLM": "infer_core.llm",
    "SamplingParams": "infer_core.request",
    "RequestOutput": "infer_core.request",
    "CompletionOutput": "infer_core.request",
    "EngineConfig": "infer_core.config",
}

__all__ = ["PLUGIN_API_VERSION", "__version__", "hookimpl", *_LAZY]


def __getattr__(name: str):
    # Lazy, so that plugin modules importing ``hookimpl`` never import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'infer_core' has no attribute {name!r}")
