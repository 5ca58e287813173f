"""The ``triton`` attention backend passes the attention-backend conformance suite under the
Triton interpreter (fp32; with and without forced split-KV; FP8 caches)."""

from __future__ import annotations

from infer_core.testing import AttentionBackendConformance


class TestTritonAttentionConformance(AttentionBackendConformance):
    name = "triton"
    max_examples = 12


class TestTritonAttentionSplitKV(AttentionBackendConformance):
    name = "triton"
    options = {"kv_splits": 3}
    max_examples = 6
