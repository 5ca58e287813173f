"""Scheduler simulations for policy tests: random workloads run through the real
:class:`~infer_core.engine.scheduler.Scheduler` and a block-pool cache, with the invariants
every policy must keep checked at every step, and a trace of what each step did.

    trace = simulate(workload, MyPolicy())
    assert trace.drained

Tokens are not sampled: a request that reaches the end of its tokens gets token id 1 appended
until it has its output length. A request reaches the scheduler at ``arrival_step``; its
``arrival_time`` is ``arrival_step - queued_steps + index / 1000`` (unique), so a request that
was queued elsewhere (an async front end) can be older than ones already running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hypothesis import strategies as st

from infer_core.engine.kv_cache import CacheBackend, ContiguousCache
from infer_core.engine.policy import R, SchedulerPolicy
from infer_core.engine.scheduler import Scheduler, SchedulerLimits
from infer_core.request import Request, RequestStatus, SamplingParams
from infer_core.testing.caches import SmallBlockCache


@dataclass(frozen=True)
class WorkloadRequest:
    arrival_step: int
    prompt_len: int
    output_len: int
    priority: int = 0
    queued_steps: int = 0


@dataclass(frozen=True)
class Workload:
    limits: SchedulerLimits
    block_size: int
    num_blocks: int
    requests: tuple[WorkloadRequest, ...]
    aborts: tuple[tuple[int, int], ...] = ()  # (step, request index)

    @property
    def contiguous(self) -> bool:
        return self.block_size == self.limits.max_model_len

    def make_cache(self) -> CacheBackend:
        return (ContiguousCache if self.contiguous else SmallBlockCache)(self.num_blocks, self.block_size)


@st.composite
def workloads(draw, max_requests: int = 12, aborts: bool = True, max_arrival_step: int = 20,
              chunked: bool | None = None, max_budget: int = 256) -> Workload:
    """Limits, a cache (one block of ``max_model_len``, or small blocks) that holds at least
    one longest request, and requests with random arrivals (some queued elsewhere first),
    lengths and priorities. ``chunked`` fixes chunked prefill on or off; ``max_budget`` caps
    the step budget (where chunked prefill allows)."""
    max_model_len = draw(st.sampled_from([64, 128]))
    chunked = draw(st.booleans()) if chunked is None else chunked
    budget = draw(st.integers(max_model_len, max(max_model_len, max_budget)) if not chunked
                  else st.integers(8, max(8, max_budget)))
    limits = SchedulerLimits(
        max_num_seqs=draw(st.integers(1, 8)),
        max_num_batched_tokens=budget,
        max_model_len=max_model_len,
        chunked_prefill=chunked,
        prefill_chunk_size=draw(st.one_of(st.none(), st.integers(1, budget))) if chunked else None,
    )
    block_size = max_model_len if draw(st.booleans()) else draw(st.sampled_from([1, 4, 16]))
    per_request = -(-max_model_len // block_size)
    num_blocks = draw(st.integers(per_request, per_request * 4))
    n = draw(st.integers(1, max_requests))
    requests = []
    for _ in range(n):
        prompt = draw(st.integers(1, max_model_len - 1))
        output = draw(st.integers(1, max_model_len - prompt))
        requests.append(WorkloadRequest(
            draw(st.integers(0, max_arrival_step)), prompt, output, draw(st.integers(-2, 2)),
            draw(st.sampled_from([0, 0, 0, 5, 30]))))
    abort_list = draw(st.lists(st.tuples(st.integers(0, 60), st.integers(0, n - 1)), max_size=3)) if aborts else []
    return Workload(limits, block_size, num_blocks, tuple(requests), tuple(abort_list))


@dataclass(frozen=True)
class StepRecord:
    """What one ``schedule()`` call saw and did."""

    step: int
    running_before: frozenset[str]
    decoding_before: frozenset[str]  # of running_before, those with one token left to compute
    waiting_before: tuple[str, ...]
    num_scheduled: Mapping[str, int]
    prefill_ids: frozenset[str]  # scheduled requests that were prefilling (not one decode token)
    admitted: tuple[str, ...]
    preempted: tuple[str, ...]
    running_after: frozenset[str]
    owed: frozenset[str]  # what the policy's must_serve returned

    @property
    def num_prefill_tokens(self) -> int:
        return sum(self.num_scheduled[r] for r in self.prefill_ids)


@dataclass
class Trace:
    workload: Workload
    requests: list[Request]
    scheduler: Scheduler
    cache: CacheBackend
    steps: list[StepRecord] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)
    aborted: set[str] = field(default_factory=set)

    @property
    def drained(self) -> bool:
        return self.scheduler.num_unfinished == 0 and len(self.finished | self.aborted) == len(self.requests)

    def request(self, request_id: str) -> Request:
        return self.requests[int(request_id[1:])]


class _Recording(SchedulerPolicy):
    """Forwards to the policy under test and remembers what ``must_serve`` returned."""

    def __init__(self, inner: SchedulerPolicy) -> None:
        super().__init__(inner.options)
        self.inner = inner
        self.max_prefill_tokens = inner.max_prefill_tokens
        self.owed: frozenset[str] = frozenset()

    def order_waiting(self, waiting: Sequence[R]) -> list[R]:
        return self.inner.order_waiting(waiting)

    def order_running(self, running: Sequence[R]) -> list[R]:
        return self.inner.order_running(running)

    def pick_victim(self, running: Sequence[R]) -> R:
        return self.inner.pick_victim(running)

    def admit_before(self, request: R) -> bool:
        return self.inner.admit_before(request)

    def can_admit(self, request: R, running: Sequence[R]) -> bool:
        return self.inner.can_admit(request, running)

    def must_serve(self, running: Sequence[R]) -> list[R]:
        owed = self.inner.must_serve(running)
        self.owed = frozenset(r.request_id for r in owed)
        return owed

    def preempt_for(self, request: R, running: Sequence[R]) -> R | None:
        return self.inner.preempt_for(request, running)

    def on_step(self, num_scheduled_tokens: Mapping[str, int]) -> None:
        self.inner.on_step(num_scheduled_tokens)


def simulate(workload: Workload, policy: SchedulerPolicy, max_steps: int = 5000) -> Trace:
    """Run ``workload`` until it drains (or ``max_steps``), asserting at every step: the token
    budget, ``max_num_seqs``, the prefill chunk and the policy's prefill cap are kept; every
    scheduled request is running with blocks covering its tokens; no block is held twice and
    none is lost; every request ``must_serve`` named got a token or was preempted."""
    limits = workload.limits
    cache = workload.make_cache()
    recording = _Recording(policy)
    scheduler = Scheduler(limits, cache, recording)
    requests = [
        Request(f"r{i}", [7] * w.prompt_len, SamplingParams(max_tokens=w.output_len),
                arrival_time=w.arrival_step - w.queued_steps + i / 1000, max_tokens=w.output_len, priority=w.priority)
        for i, w in enumerate(workload.requests)
    ]
    trace = Trace(workload, requests, scheduler, cache)
    for step in range(max_steps):
        for i, w in enumerate(workload.requests):
            if w.arrival_step == step:
                scheduler.add_request(requests[i])
        for when, i in workload.aborts:
            if when == step and scheduler.finish_request(f"r{i}", RequestStatus.FINISHED_ABORTED):
                trace.aborted.add(f"r{i}")
        running_before = frozenset(r.request_id for r in scheduler.running)
        decoding_before = frozenset(r.request_id for r in scheduler.running
                                    if r.num_computed_tokens >= r.num_tokens - 1)
        waiting_before = tuple(r.request_id for r in scheduler.waiting)
        recording.owed = frozenset()
        out = scheduler.schedule()
        prefill_ids = frozenset(rid for rid in out.num_scheduled_tokens
                                if scheduler.requests[rid].num_computed_tokens
                                < scheduler.requests[rid].num_tokens - 1)
        record = StepRecord(
            step, running_before, decoding_before, waiting_before, dict(out.num_scheduled_tokens), prefill_ids,
            tuple(n.request_id for n in out.scheduled_new_reqs), tuple(out.preempted_req_ids),
            frozenset(r.request_id for r in scheduler.running), recording.owed,
        )
        _check_step(trace, record, policy.max_prefill_tokens)
        trace.steps.append(record)
        for req in scheduler.update_from_output(out):
            req.output_token_ids.append(1)
            if req.num_output_tokens == req.max_tokens:
                scheduler.finish_request(req.request_id, RequestStatus.FINISHED_LENGTH)
                trace.finished.add(req.request_id)
        last_event = max([w.arrival_step for w in workload.requests] + [s for s, _ in workload.aborts])
        if step >= last_event and not scheduler.num_unfinished:
            break
    return trace


def _check_step(trace: Trace, record: StepRecord, prefill_cap: int | None) -> None:
    limits, scheduler, cache = trace.workload.limits, trace.scheduler, trace.cache
    total = sum(record.num_scheduled.values())
    assert total <= limits.max_num_batched_tokens, f"step {record.step}: {total} tokens over the budget"
    assert len(scheduler.running) <= limits.max_num_seqs, f"step {record.step}: over max_num_seqs"
    for rid, num in record.num_scheduled.items():
        req = scheduler.requests[rid]
        assert rid in record.running_after, f"step {record.step}: {rid} scheduled but not running"
        assert num >= 1
        assert req.num_computed_tokens + num <= min(req.num_tokens, limits.max_model_len)
        if limits.prefill_chunk_size and req.num_computed_tokens + num < req.num_tokens:
            assert num <= limits.prefill_chunk_size
        assert len(cache.get_block_ids(rid)) * cache.block_size >= req.num_computed_tokens + num
    if prefill_cap is not None and record.num_prefill_tokens > prefill_cap:
        assert not limits.chunked_prefill and len(record.prefill_ids) == 1, (
            f"step {record.step}: {record.num_prefill_tokens} prefill tokens over the policy's cap "
            f"of {prefill_cap}")
    for rid in record.owed:
        assert rid in record.num_scheduled or rid in record.preempted, (
            f"step {record.step}: must_serve named {rid} but it got no token")
    held = [b for r in scheduler.running for b in cache.get_block_ids(r.request_id)]
    assert len(held) == len(set(held)), f"step {record.step}: a block is held twice"
    assert len(held) + cache.num_free_blocks == cache.num_blocks, f"step {record.step}: blocks lost"
