"""The ``paged`` and ``prefix`` backends through their interface: growth, watermark, options,
prefix hits, the recomputed last token, salts, LRU eviction, counters and reset."""

from __future__ import annotations

import pytest

from infer_cache_paged.hashing import BlockHasher
from infer_cache_paged.paged import PagedCache, PagedCacheOptions
from infer_cache_paged.prefix import PrefixCache, PrefixCacheOptions
from infer_core.errors import ConfigError
from infer_core.plugins import make_plugin_manager
from infer_core.testing import SyntheticRequest


def request(rid: str, tokens: list[int], salt: str | None = None) -> SyntheticRequest:
    return SyntheticRequest(rid, num_prompt_tokens=len(tokens), prompt_token_ids=list(tokens), cache_salt=salt)


def admit(cache, req: SyntheticRequest) -> tuple[list[int], int]:
    """What the scheduler does at admission; returns the hit blocks and tokens."""
    blocks, hit = cache.get_computed_blocks(req)
    assert cache.allocate_slots(req, req.num_tokens - hit, hit, blocks) is not None
    req.num_computed_tokens = req.num_tokens
    return blocks, hit


# -- paged -------------------------------------------------------------------------------------


def test_table_grows_one_block_at_a_time():
    cache = PagedCache(8, 4)
    req = request("a", list(range(5)))
    assert cache.allocate_slots(req, 5) == [0, 1]
    req.num_computed_tokens = 5
    for _ in range(5, 8):  # decodes within the second block need nothing
        assert cache.allocate_slots(req, 1) == []
        req.num_computed_tokens += 1
    assert cache.allocate_slots(req, 1) == [2]
    assert cache.get_block_ids("a") == [0, 1, 2]
    assert cache.num_free_tokens == 5 * 4
    assert cache.slot_mapping("a", 3, 9) == [3, 4, 5, 6, 7, 8]


def test_watermark_keeps_headroom_for_running_requests_but_never_blocks_an_idle_pool():
    cache = PagedCache(10, 4, PagedCacheOptions(watermark=0.2))  # 2 blocks of headroom
    assert cache.watermark_blocks == 2
    big = request("big", list(range(40)))
    assert cache.allocate_slots(big, 40) is not None  # idle pool: the whole of it
    cache.free("big")
    a = request("a", list(range(28)))
    assert cache.allocate_slots(a, 28) is not None  # 7 blocks, 3 left
    b = request("b", list(range(8)))
    assert cache.allocate_slots(b, 8) is None  # would leave 1 < 2
    assert cache.num_free_blocks == 3 and cache.get_block_ids("b") == []
    a.num_computed_tokens = 28
    assert cache.allocate_slots(a, 8) is not None  # a running request may use the headroom


def test_block_size_larger_than_the_model_is_refused():
    assert PagedCache.block_size_for(16, 4096) == 16
    with pytest.raises(ConfigError, match=r"cache.block_size \(64\) exceeds model.max_model_len \(32\)"):
        PagedCache.block_size_for(64, 32)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("paged", {"watermark": "lots"}, "watermark: Input should be a valid number"),
    ("paged", {"watermark": 1.5}, "watermark: Input should be less than 1"),
    ("prefix", {"hash_algorithm": "md5"}, "hash_algorithm: Input should be 'sha256' or 'blake2b'"),
    ("paged", {"hash_algorithm": "sha256"}, "hash_algorithm: Extra inputs are not permitted"),
])
def test_options_are_validated_with_a_clear_message(name, options, message):
    spec = make_plugin_manager().cache_backends.get(name)
    with pytest.raises(ConfigError) as e:
        spec.validate_options(options, "cache")
    assert str(e.value).startswith(f"invalid [cache.options] for cache backend '{name}' (infer-cache-paged ")
    assert message in str(e.value)


def test_owners_and_audit_reclaim():
    cache = PagedCache(6, 4)
    for rid in "abc":
        assert cache.allocate_slots(request(rid, [1] * 6), 6) is not None
    assert cache.owners()[cache.get_block_ids("b")[0]] == ["b"]
    assert cache.audit(["a", "c"], reclaim=True) == {"b": [2, 3]}
    assert cache.get_block_ids("b") == [] and cache.num_free_blocks == 2


# -- prefix ------------------------------------------------------------------------------------


def test_hashes_are_chained_salted_and_not_pythons_hash():
    hasher = BlockHasher()
    root = hasher.root(None)
    first = hasher.block(root, [1, 2, 3, 4])
    assert len(first) == 32 and first != hasher.block(root, [1, 2, 3, 5])
    assert hasher.block(first, [5, 6, 7, 8]) != hasher.block(hasher.block(root, [0, 2, 3, 4]), [5, 6, 7, 8])
    assert hasher.root("tenant-a") != root != hasher.root("")  # "" differs from no salt
    assert hasher.chain(root, list(range(10)), 4, 0, 2) == [first := hasher.block(root, [0, 1, 2, 3]),
                                                             hasher.block(first, [4, 5, 6, 7])]
    assert BlockHasher("blake2b").root(None) != root


def test_longest_cached_prefix_is_reused_with_refcounts():
    cache = PrefixCache(16, 4)
    system = list(range(100, 110))  # 2 full blocks + 2 tokens
    a = request("a", [*system, 1, 2, 3])
    assert admit(cache, a) == ([], 0)
    b = request("b", [*system, 7, 8, 9, 9, 9])
    blocks, hit = admit(cache, b)
    assert blocks == cache.get_block_ids("a")[:2] and hit == 8
    assert cache.get_block_ids("b")[:2] == blocks and cache.get_block_ids("b")[2] not in cache.get_block_ids("a")
    assert [cache.pool.blocks[i].ref_cnt for i in blocks] == [2, 2]
    stats = cache.prefix_cache_stats
    assert (stats.requests, stats.queries, stats.hits) == (2, 13 + 15, 8)
    cache.free("a")
    assert [cache.pool.blocks[i].ref_cnt for i in blocks] == [1, 1]


def test_whole_prompt_hit_recomputes_the_last_token():
    cache = PrefixCache(16, 4)
    unaligned, aligned = list(range(11)), list(range(50, 62))
    admit(cache, request("a", unaligned))
    admit(cache, request("b", aligned))
    assert cache.get_computed_blocks(request("a2", unaligned))[1] == 8  # blocks 0-1; 3 tokens left
    blocks, hit = cache.get_computed_blocks(request("b2", aligned))
    assert hit == 8 and blocks == cache.get_block_ids("b")[:2]  # last block recomputed, not written
    assert cache.get_computed_blocks(request("one", [5]))[1] == 0


def test_output_tokens_are_hashed_as_blocks_fill():
    cache = PrefixCache(16, 4)
    a = request("a", [1, 2, 3])
    admit(cache, a)
    for token in [4, 5, 6, 7, 8]:  # decode: the block fills with output tokens
        a.output_token_ids.append(token)
        a.num_output_tokens += 1
        assert cache.allocate_slots(a, 1) is not None
        a.num_computed_tokens += 1
    assert cache.num_cached_blocks == 2
    follow_up = request("b", [1, 2, 3, 4, 5, 6, 7, 8, 9])  # the conversation continues
    assert cache.get_computed_blocks(follow_up) == (cache.get_block_ids("a"), 8)


def test_cache_salt_separates_tenants():
    cache = PrefixCache(16, 4)
    tokens = list(range(9))
    admit(cache, request("a", tokens, salt="alice"))
    assert cache.get_computed_blocks(request("b", tokens, salt="bob"))[1] == 0
    assert cache.get_computed_blocks(request("c", tokens))[1] == 0
    assert cache.get_computed_blocks(request("d", tokens, salt="alice"))[1] == 8


def test_freed_prefix_stays_cached_until_its_blocks_are_needed():
    cache = PrefixCache(6, 4)
    old = request("old", list(range(8)))
    admit(cache, old)
    cache.free("old")
    assert cache.num_free_blocks == 6 and cache.num_cached_blocks == 2
    admit(cache, request("x", list(range(100, 112))))  # 3 blocks: uncached ones first
    assert cache.num_cached_blocks == 5 and cache.pool.num_evictions == 0
    assert cache.get_computed_blocks(request("old2", [*range(8), 0]))[1] == 8
    cache.free("x")  # its blocks are now the most recently used
    admit(cache, request("y", list(range(200, 212))))  # 3 blocks: 1 uncached, then old's 2 (LRU)
    assert cache.pool.num_evictions == 2
    assert cache.get_computed_blocks(request("old3", [*range(8), 0]))[1] == 0
    assert cache.get_computed_blocks(request("x2", list(range(100, 112))))[1] == 8  # x's survive


def test_hits_on_free_blocks_count_against_capacity():
    cache = PrefixCache(4, 4)
    admit(cache, request("a", list(range(12))))
    cache.free("a")
    b = request("b", [*range(12), 1, 2, 3, 4, 5])  # hits 3 cached-free blocks, needs 2 more
    blocks, hit = cache.get_computed_blocks(b)
    assert hit == 12
    before = cache.num_free_blocks
    assert cache.allocate_slots(b, 5, hit, blocks) is None  # 4 blocks exist, 5 are needed
    assert cache.num_free_blocks == before and cache.num_cached_blocks == 3
    assert cache.prefix_cache_stats.requests == 1  # a refused admission is not counted


def test_reset_prefix_cache():
    cache = PrefixCache(8, 4)
    a = request("a", list(range(9)))
    admit(cache, a)
    assert cache.reset_prefix_cache() is True
    assert cache.num_cached_blocks == 0
    assert cache.get_computed_blocks(request("b", list(range(9))))[1] == 0
    cache.free("a")
    assert cache.num_free_blocks == 8 and cache.audit([]) == {}


def test_prefix_options_default_to_sha256():
    assert PrefixCache(2, 4).hasher.algorithm == "sha256"
    assert PrefixCache(2, 4, PrefixCacheOptions(hash_algorithm="blake2b")).hasher.algorithm == "blake2b"


def test_a_freed_sequence_is_evicted_from_its_tail():
    cache = PrefixCache(4, 4)
    admit(cache, request("a", list(range(12))))  # 3 full blocks, all cached
    cache.free("a")
    admit(cache, request("b", list(range(100, 106))))  # 2 blocks: the uncached one, then a's last
    assert cache.pool.num_evictions == 1
    assert cache.get_computed_blocks(request("a2", list(range(12))))[1] == 8  # a's head survives
