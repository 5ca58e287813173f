"""The built-in ``torch`` attention backend against dense attention (conformance suite)."""

from __future__ import annotations

from infer_core.testing import AttentionBackendConformance


class TestTorchAttentionConformance(AttentionBackendConformance):
    name = "torch"
