"""The built-in ``contiguous`` cache backend: conformance suite plus its layout."""

from __future__ import annotations

from infer_core.engine.kv_cache import ContiguousCache
from infer_core.testing import CacheBackendConformance, SyntheticRequest


class TestContiguousConformance(CacheBackendConformance):
    name = "contiguous"
    num_blocks = 6  # fewer blocks than the suite's 12 request ids: refusals are exercised


def test_one_block_of_max_model_len_per_request():
    assert ContiguousCache.block_size_for(16, 4096) == 4096
    cache = ContiguousCache(num_blocks=3, block_size=4096)
    req = SyntheticRequest("a", num_prompt_tokens=100)
    assert cache.allocate_slots(req, 100) == [0]
    req.num_computed_tokens = 100
    assert cache.allocate_slots(req, 1) == []  # decode steps need no new block
    assert cache.get_block_ids("a") == [0]
    assert cache.num_free_blocks == 2
    assert cache.num_free_tokens == 2 * 4096


def test_slots_are_contiguous_within_the_request_block():
    cache = ContiguousCache(num_blocks=2, block_size=8)
    a, b = SyntheticRequest("a"), SyntheticRequest("b")
    cache.allocate_slots(a, 3)
    cache.allocate_slots(b, 5)
    assert cache.slot_mapping("a", 0, 3) == [0, 1, 2]
    assert cache.slot_mapping("b", 2, 5) == [10, 11, 12]


def test_audit_lists_blocks_of_requests_that_are_gone():
    cache = ContiguousCache(num_blocks=4, block_size=8)
    for rid in ("a", "b", "c"):
        cache.allocate_slots(SyntheticRequest(rid), 4)
    assert cache.audit(["a", "c"]) == {"b": [1]}
    cache.free("b")
    assert cache.audit(["a", "c"]) == {}
    assert cache.usage == 0.5
