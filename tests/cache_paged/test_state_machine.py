"""A hypothesis state machine over the ``prefix`` backend (and ``paged`` through it): arrive,
admit with prefix hits, append, finish, preempt, abort, evict, reset and leak-reclaim, with
the pool's invariants checked after every step.

Invariants: free + held == total; ref counts >= 0 and equal to the number of tables holding a
block; no block both free and held; the free queue holds uncached blocks before cached ones;
the hash map and the blocks' hashes agree; a block is written only by its sole holder; a hit
block holds the same salt and token prefix; a block is evicted only when no uncached free
block was left. CI runs at least 10 000 steps per backend (``MACHINE_SETTINGS``).
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from infer_cache_paged.paged import PagedCache, PagedCacheOptions
from infer_cache_paged.prefix import PrefixCache, PrefixCacheOptions
from infer_core.testing import SyntheticRequest

NUM_BLOCKS = 24
BLOCK_SIZE = 4
MAX_LEN = 64
MACHINE_SETTINGS = settings(
    max_examples=130, stateful_step_count=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def tokens_of(family: int, start: int, end: int) -> list[int]:
    return [(family * 7919 + pos * 13) % 1000 for pos in range(start, end)]


class CacheMachine(RuleBasedStateMachine):
    cache_cls = PrefixCache

    def __init__(self) -> None:
        super().__init__()
        options_cls = PrefixCacheOptions if self.cache_cls is PrefixCache else PagedCacheOptions
        self.cache = self.cache_cls(NUM_BLOCKS, BLOCK_SIZE, options_cls(watermark=0.0))
        self.pool = self.cache.pool
        self.waiting: dict[str, SyntheticRequest] = {}
        self.running: dict[str, SyntheticRequest] = {}
        self.family: dict[str, int] = {}
        self.filled: dict[int, tuple] = {}  # block id -> (salt, token prefix up to its end)
        self.ids = itertools.count()

    # -- helpers -------------------------------------------------------------------------------

    def allocate(self, req: SyntheticRequest, num_new: int, num_hit: int = 0, blocks=()) -> bool:
        """allocate_slots, checking that a refusal changes nothing and that cached blocks are
        evicted only when no uncached free block is left; on success, 'computes' the tokens."""
        rid = req.request_id
        before = (self.cache.num_free_blocks, self.cache.get_block_ids(rid), dict(self.pool.cached))
        uncached_free = sum(1 for b in self.pool.free_queue if b.block_hash is None)
        evictions = self.pool.num_evictions
        new = self.cache.allocate_slots(req, num_new, num_hit, blocks)
        if new is None:
            assert (self.cache.num_free_blocks, self.cache.get_block_ids(rid), dict(self.pool.cached)) == before
            return False
        assert self.pool.num_evictions - evictions == max(0, len(new) - uncached_free)
        assert self.cache.get_block_ids(rid) == before[1] + list(blocks) + new
        start = req.num_computed_tokens + num_hit
        tokens = req.all_token_ids
        owners = self.cache.owners()
        for pos in range(start, start + num_new):
            block = self.cache.get_block_ids(rid)[pos // BLOCK_SIZE]
            assert owners[block] == [rid], f"{rid} writes into block {block} held by {owners[block]}"
            self.filled.pop(block, None)
            if pos % BLOCK_SIZE == BLOCK_SIZE - 1:
                self.filled[block] = (req.cache_salt, tuple(tokens[: pos + 1]))
        req.num_computed_tokens = start + num_new
        return True

    def pick(self, data: st.DataObject, pool: dict[str, SyntheticRequest]) -> SyntheticRequest:
        return pool[data.draw(st.sampled_from(sorted(pool)))]

    # -- rules ---------------------------------------------------------------------------------

    @rule(family=st.integers(0, 3), n=st.one_of(st.integers(1, 40), st.sampled_from([8, 16, 32])),
          salt=st.sampled_from([None, None, "alice", "bob"]))
    def arrive(self, family: int, n: int, salt: str | None) -> None:
        rid = f"r{next(self.ids)}"
        self.family[rid] = family
        self.waiting[rid] = SyntheticRequest(rid, num_prompt_tokens=n, prompt_token_ids=tokens_of(family, 0, n),
                                             cache_salt=salt)

    @precondition(lambda self: self.waiting)
    @rule(data=st.data(), chunk=st.integers(1, 48))
    def admit(self, data: st.DataObject, chunk: int) -> None:
        req = self.pick(data, self.waiting)
        blocks, hit = self.cache.get_computed_blocks(req)
        assert hit == len(blocks) * BLOCK_SIZE and hit <= req.num_tokens - 1
        if self.cache_cls is PagedCache:
            assert blocks == []
        for i, block in enumerate(blocks):
            assert self.filled.get(block) == (req.cache_salt, tuple(req.all_token_ids[: (i + 1) * BLOCK_SIZE]))
        if self.allocate(req, min(chunk, req.num_tokens - hit), hit, blocks):
            self.running[req.request_id] = self.waiting.pop(req.request_id)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), k=st.integers(1, 8))
    def append(self, data: st.DataObject, k: int) -> None:
        """A prefill chunk if the request has uncomputed tokens, else ``k`` new output tokens."""
        req = self.pick(data, self.running)
        if req.num_computed_tokens == req.num_tokens:
            k = min(k, MAX_LEN - req.num_tokens)
            if k <= 0:
                return
            req.output_token_ids.extend(tokens_of(self.family[req.request_id], req.num_tokens, req.num_tokens + k))
            req.num_output_tokens += k
        num_new = min(k, req.num_tokens - req.num_computed_tokens)
        self.allocate(req, num_new)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        req = self.pick(data, self.running)
        self.cache.free(req.request_id)
        del self.running[req.request_id]

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def preempt(self, data: st.DataObject) -> None:
        req = self.pick(data, self.running)
        self.cache.free(req.request_id)
        req.num_computed_tokens = 0
        self.waiting[req.request_id] = self.running.pop(req.request_id)

    @precondition(lambda self: self.waiting or self.running)
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        pool = data.draw(st.sampled_from([p for p in (self.waiting, self.running) if p]))
        req = self.pick(data, pool)
        self.cache.free(req.request_id)
        self.cache.free(req.request_id)  # freeing twice at the request level is harmless
        del pool[req.request_id]

    @rule(family=st.integers(4, 1000))
    def evict(self, family: int) -> None:
        """Admit a request with a fresh prefix that needs a block more than the uncached free
        blocks (one cached block must be evicted, the least recently used)."""
        uncached = sum(1 for b in self.pool.free_queue if b.block_hash is None)
        n = min(MAX_LEN, (uncached + 1) * BLOCK_SIZE, self.cache.num_free_blocks * BLOCK_SIZE)
        if n == 0:
            return
        rid = f"r{next(self.ids)}"
        self.family[rid] = family
        req = SyntheticRequest(rid, num_prompt_tokens=n, prompt_token_ids=tokens_of(family, 0, n))
        if self.allocate(req, n):
            self.running[rid] = req

    @rule()
    def reset(self) -> None:
        assert self.cache.reset_prefix_cache() is True
        assert not self.pool.cached

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def leak_and_reclaim(self, data: st.DataObject) -> None:
        """A request the engine forgot: the audit finds exactly its blocks and reclaims them."""
        req = self.pick(data, self.running)
        del self.running[req.request_id]
        table = self.cache.get_block_ids(req.request_id)
        assert self.cache.audit(self.running) == {req.request_id: table}
        assert self.cache.audit(self.running, reclaim=True) == {req.request_id: table}
        assert self.cache.audit(self.running) == {}

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def pool_is_consistent(self) -> None:
        blocks = self.pool.blocks
        holders = [0] * NUM_BLOCKS
        for rid, req in self.running.items():
            table = self.cache.get_block_ids(rid)
            assert len(table) == len(set(table))
            assert len(table) * BLOCK_SIZE >= req.num_computed_tokens
            for b in table:
                holders[b] += 1
        for rid in self.waiting:
            assert self.cache.get_block_ids(rid) == []
        assert [b.ref_cnt for b in blocks] == holders  # >= 0, and exactly the holders
        queued = list(self.pool.free_queue)
        assert len(queued) == len(set(queued)) == self.cache.num_free_blocks
        assert all(b.ref_cnt == 0 for b in queued)  # never both free and held
        assert self.cache.num_free_blocks + sum(1 for h in holders if h) == NUM_BLOCKS
        hashed = [b.block_hash is not None for b in queued]
        assert hashed == sorted(hashed), "an uncached free block behind a cached one"
        assert all(blocks[b.block_id] is b and b.block_hash == h for h, b in self.pool.cached.items())
        assert sum(b.block_hash is not None for b in blocks) == len(self.pool.cached)
        if self.cache_cls is PagedCache:
            assert not self.pool.cached

    def teardown(self) -> None:
        for rid in [*self.running, *self.waiting]:
            self.cache.free(rid)
        assert self.cache.num_free_blocks == NUM_BLOCKS
        assert self.cache.audit([]) == {}


class PagedMachine(CacheMachine):
    cache_cls = PagedCache


TestPrefixMachine = CacheMachine.TestCase
TestPrefixMachine.settings = MACHINE_SETTINGS
TestPagedMachine = PagedMachine.TestCase
TestPagedMachine.settings = MACHINE_SETTINGS
