"""``paged`` and ``prefix`` against the cache-backend conformance suite of infer_core.testing."""

from __future__ import annotations

from infer_core.testing import CacheBackendConformance


class TestPagedConformance(CacheBackendConformance):
    name = "paged"
    options = {"watermark": 0.0}


class TestPrefixConformance(CacheBackendConformance):
    name = "prefix"


class TestPrefixBlake2bConformance(CacheBackendConformance):
    name = "prefix"
    options = {"hash_algorithm": "blake2b", "watermark": 0.05}
    num_blocks = 12
