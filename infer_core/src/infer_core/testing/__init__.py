"""Test support for infer and its plugins (the conformance suites need the ``test`` extra:
pytest and hypothesis).

Subclass the suite of your extension point in a test module and name your component::

    from infer_core.testing import SchedulerPolicyConformance

    class TestShortestFirst(SchedulerPolicyConformance):
        name = "shortest_first"
        options = {"max_skips": 4}

The built-in and first-party plugins run the same suites. The suites are imported lazily, so
``infer_core.testing.fixtures`` and ``infer_core.testing.runner`` work without pytest.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "ArchitectureConformance": "infer_core.testing.conformance",
    "AttentionBackendConformance": "infer_core.testing.conformance",
    "CacheBackendConformance": "infer_core.testing.conformance",
    "PluginConformance": "infer_core.testing.conformance",
    "SchedulerPolicyConformance": "infer_core.testing.conformance",
    "SyntheticRequest": "infer_core.testing.requests",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'infer_core.testing' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
