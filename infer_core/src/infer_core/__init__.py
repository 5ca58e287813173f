"""infer: a fast LLM inference engine for small dense models.

The public API of ``infer_core``. Everything a plugin needs is importable from here or from
the modules named in ``docs/plugins.md``.
"""

from __future__ import annotations

import pluggy

from infer_core.version import PLUGIN_API_VERSION, __version__

hookimpl = pluggy.HookimplMarker("infer")

__all__ = ["PLUGIN_API_VERSION", "__version__", "hookimpl"]
