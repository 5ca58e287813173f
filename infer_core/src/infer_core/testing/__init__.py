"""Conformance suites for plugin authors (needs the ``test`` extra: pytest and hypothesis).

Subclass the suite of your extension point in a test module and name your component::

    from infer_core.testing import SchedulerPolicyConformance

    class TestShortestFirst(SchedulerPolicyConformance):
        name = "shortest_first"
        options = {"max_skips": 4}

The built-in and first-party plugins run the same suites.
"""

from infer_core.testing.conformance import (
    ArchitectureConformance,
    AttentionBackendConformance,
    CacheBackendConformance,
    PluginConformance,
    SchedulerPolicyConformance,
)
from infer_core.testing.requests import SyntheticRequest

__all__ = [
    "ArchitectureConformance",
    "AttentionBackendConformance",
    "CacheBackendConformance",
    "PluginConformance",
    "SchedulerPolicyConformance",
    "SyntheticRequest",
]
