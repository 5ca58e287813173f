"""The backends under the real scheduler, with a stand-in for the model: random workloads with
shared prompts, chunked prefill, preemption and aborts keep every request's KV right and give
every block back; and the capacity claim — at the same KV memory, ``paged`` runs at least 3x
as many requests at once as ``contiguous`` (counted, not timed)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_cache_paged.paged import PagedCache, PagedCacheOptions
from infer_cache_paged.prefix import PrefixCache, PrefixCacheOptions
from infer_core.engine.kv_cache import CacheBackend, ContiguousCache
from infer_core.engine.policy import FCFSPolicy
from infer_core.engine.scheduler import Scheduler, SchedulerLimits
from infer_core.request import Request, RequestStatus, SamplingParams

SYSTEM_PROMPTS = [[(i * 37 + 11) % 500 for i in range(n)] for n in (20, 37, 8)]


def make_request(rid: str, prompt: list[int], max_tokens: int, salt: str | None = None) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens), arrival_time=0.0,
                   max_tokens=max_tokens, cache_salt=salt)


def next_token(request: Request) -> int:
    """The stand-in model: the next token depends only on the sequence so far, so requests with
    equal prompts generate equal outputs (and their output blocks can be shared)."""
    return (sum(request.all_token_ids[-3:]) * 31 + request.num_tokens) % 500


class KVModel:
    """What each cache slot holds: (salt, digest of the token prefix ending there). Checks that
    a step never writes one slot twice and that every request reads only its own prefix."""

    def __init__(self, cache: CacheBackend) -> None:
        self.cache = cache
        self.slots: dict[int, tuple] = {}

    @staticmethod
    def keys(request: Request, end: int) -> list[tuple]:
        keys, digest = [], 0
        for token in request.all_token_ids[:end]:
            digest = hash((digest, token))
            keys.append((request.cache_salt, digest))
        return keys

    def step(self, scheduler: Scheduler, out) -> None:
        written: set[int] = set()
        for rid, num in out.num_scheduled_tokens.items():
            request = scheduler.requests[rid]
            start = request.num_computed_tokens
            keys = self.keys(request, start + num)
            slots = self.cache.slot_mapping(rid, start, start + num)
            assert not written & set(slots), "two requests write one slot in a step"
            written.update(slots)
            self.slots.update(zip(slots, keys[start:], strict=True))
        for rid, num in out.num_scheduled_tokens.items():  # attention reads after the writes
            request = scheduler.requests[rid]
            end = request.num_computed_tokens + num
            read = [self.slots.get(s) for s in self.cache.slot_mapping(rid, 0, end)]
            assert read == self.keys(request, end), f"{rid} would attend to another sequence's KV"


def run(scheduler: Scheduler, requests: list[Request], aborts: dict[int, str] | None = None,
        kv: KVModel | None = None, max_steps: int = 20_000) -> int:
    """Drive ``scheduler`` to completion; returns the most requests that ran at once."""
    for request in requests:
        scheduler.add_request(request)
    peak = 0
    for step in range(max_steps):
        if not scheduler.num_unfinished:
            return peak
        if aborts and step in aborts:
            scheduler.finish_request(aborts[step], RequestStatus.FINISHED_ABORTED)
        out = scheduler.schedule()
        peak = max(peak, len(scheduler.running))
        if kv is not None:
            kv.step(scheduler, out)
        for request in scheduler.update_from_output(out):
            request.output_token_ids.append(next_token(request))
            if request.num_output_tokens >= request.max_tokens:
                scheduler.finish_request(request.request_id, RequestStatus.FINISHED_LENGTH)
    pytest.fail(f"{scheduler.num_unfinished} requests unfinished after {max_steps} steps")


@st.composite
def workloads(draw):
    n = draw(st.integers(1, 10))
    requests = []
    for i in range(n):
        system = SYSTEM_PROMPTS[draw(st.integers(0, 2))]
        user = draw(st.lists(st.integers(0, 499), max_size=24))
        salt = draw(st.sampled_from([None, None, "tenant-a"]))
        requests.append(make_request(f"r{i}", system + user, draw(st.integers(1, 16)), salt))
    aborts = draw(st.dictionaries(st.integers(0, 60), st.sampled_from([r.request_id for r in requests]),
                                  max_size=2))
    return requests, aborts


@pytest.mark.parametrize("backend", ["paged", "prefix"])
@settings(max_examples=40, deadline=None)
@given(workload=workloads(), num_blocks=st.integers(20, 48), budget=st.integers(8, 64),
       repeat=st.booleans())
def test_random_workloads_read_only_their_own_kv_and_give_every_block_back(
        backend, workload, num_blocks, budget, repeat):
    requests, aborts = workload
    cls, options = (PagedCache, PagedCacheOptions) if backend == "paged" else (PrefixCache, PrefixCacheOptions)
    cache = cls(num_blocks, 4, options(watermark=0.0))
    scheduler = Scheduler(SchedulerLimits(max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=80),
                          cache, FCFSPolicy())
    kv = KVModel(cache)
    run(scheduler, requests, aborts, kv)
    if repeat:  # the same prompts again: everything hit is still cached or evicted cleanly
        again = [make_request(f"{r.request_id}-again", r.prompt_token_ids, r.max_tokens, r.cache_salt)
                 for r in requests]
        run(scheduler, again, None, kv)
    assert cache.audit([]) == {}
    assert cache.num_free_blocks == cache.num_blocks
    assert all(b.ref_cnt == 0 for b in cache.pool.blocks)


def test_prefix_hits_shared_system_prompts_and_repeats():
    cache = PrefixCache(64, 4)
    scheduler = Scheduler(SchedulerLimits(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=80),
                          cache, FCFSPolicy())
    kv = KVModel(cache)
    first = [make_request(f"a{i}", SYSTEM_PROMPTS[1] + [i, i + 1], 8) for i in range(6)]
    run(scheduler, first, kv=kv)
    stats = cache.prefix_cache_stats
    assert stats.requests == 6 and stats.hits >= 5 * 36  # later ones reuse the 9 system blocks
    run(scheduler, [make_request("again", first[0].prompt_token_ids, 8)], kv=kv)
    assert cache.prefix_cache_stats.hits - stats.hits == 36  # 39 tokens: 9 blocks; the last recomputed


def capacity_workload(seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(500) for _ in range(rng.randint(32, 512))], rng.randint(16, 128))
            for _ in range(64)]


@pytest.mark.parametrize("paged_cls", [PagedCache, PrefixCache])
def test_paged_runs_three_times_as_many_requests_as_contiguous_in_the_same_memory(paged_cls):
    """64 requests, prompts 32-512, outputs 16-128; max_model_len 1024 and KV memory for 16
    requests of that length (16 384 tokens)."""
    max_model_len, memory_tokens, block_size = 1024, 16 * 1024, 16
    limits = SchedulerLimits(max_num_seqs=256, max_num_batched_tokens=2048, max_model_len=max_model_len)
    peaks = {}
    for name, cache in [
        ("contiguous", ContiguousCache(memory_tokens // max_model_len, max_model_len)),
        ("paged", paged_cls(memory_tokens // block_size, block_size)),
    ]:
        requests = [make_request(f"r{i}", prompt, out) for i, (prompt, out) in enumerate(capacity_workload())]
        scheduler = Scheduler(limits, cache, FCFSPolicy())
        peaks[name] = run(scheduler, requests)
        assert cache.audit([]) == {} and cache.num_free_blocks == cache.num_blocks
    assert peaks["contiguous"] == 16
    assert peaks["paged"] >= 3 * peaks["contiguous"], peaks
