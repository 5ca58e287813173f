"""The unified token-budget scheduler (vLLM V1's design).

There are no prefill and decode phases. A request has ``num_computed_tokens`` (KV in the
cache) and ``num_tokens`` (prompt + output so far); each step hands out a budget of
``max_num_batched_tokens`` tokens over at most ``max_num_seqs`` requests, and a request gets
``min(num_tokens - num_computed_tokens, budget left, prefill chunk)``. A prefill chunk, a
decode and a prefix hit are the same arithmetic.

Running requests are served first, in the policy's order; when the cache cannot grow one of
them, the policy's victim is preempted (its blocks freed, recomputed later). Waiting requests
are admitted next, in the policy's order, while the budget, the sequence cap and the cache allow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from infer_core.engine.kv_cache import CacheBackend
from infer_core.engine.policy import SchedulerPolicy
from infer_core.request import Request, RequestStatus, SamplingParams


@dataclass(frozen=True)
class NewRequestData:
    """A request the runner has no state for: first scheduled, or resumed after preemption
    (then ``output_token_ids`` holds what it had generated, to be recomputed)."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int


@dataclass(frozen=True)
class CachedRequestData:
    """A request the runner already holds, with the blocks it gained this step."""

    request_id: str
    new_block_ids: list[int]
    num_computed_tokens: int


@dataclass(frozen=True)
class SchedulerOutput:
    """One step's plan, as plain data (it can cross a process boundary)."""

    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: list[CachedRequestData]
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    finished_req_ids: list[str] = field(default_factory=list)
    preempted_req_ids: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass(frozen=True)
class SchedulerLimits:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    chunked_prefill: bool = True
    prefill_chunk_size: int | None = None


class Scheduler:
    def __init__(self, limits: SchedulerLimits, cache: CacheBackend, policy: SchedulerPolicy) -> None:
        self.limits = limits
        self.cache = cache
        self.policy = policy
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._finished_ids: list[str] = []
        self._known_to_runner: set[str] = set()
        self.num_preemptions = 0

    # -- requests ---------------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        assert request.request_id not in self.requests, request.request_id
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_request(self, request_id: str, status: RequestStatus) -> Request | None:
        """End a request (stopped, length, aborted, failed): its blocks go back now."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        assert status.finished
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = status
        self.cache.free(request_id)
        if request_id in self._known_to_runner:
            self._finished_ids.append(request_id)
            self._known_to_runner.discard(request_id)
        return request

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    # -- one step -----------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        limits = self.limits
        budget = limits.max_num_batched_tokens
        num_scheduled: dict[str, int] = {}
        new_reqs: list[NewRequestData] = []
        cached_reqs: list[CachedRequestData] = []
        preempted: list[str] = []

        # 1. Running requests, in the policy's order.
        order = self.policy.order_running(self.running)
        candidates = list(order)  # not yet scheduled this step: possible victims
        for request in order:
            if budget == 0:
                break
            if request not in candidates:  # preempted earlier in this loop
                continue
            num_new = self._num_new_tokens(request, budget)
            if num_new == 0:
                candidates.remove(request)
                continue
            while True:
                new_blocks = self.cache.allocate_slots(request, num_new)
                if new_blocks is not None:
                    break
                victim = self.policy.pick_victim(candidates)
                self._preempt(victim)
                preempted.append(victim.request_id)
                candidates.remove(victim)
                if victim is request:
                    break
            if new_blocks is None:
                continue
            candidates.remove(request)
            num_scheduled[request.request_id] = num_new
            budget -= num_new
            cached_reqs.append(CachedRequestData(request.request_id, new_blocks, request.num_computed_tokens))

        # 2. Waiting requests, unless this step had to preempt (no room to admit anyone).
        if not preempted:
            for request in self.policy.order_waiting(self.waiting):
                if budget == 0 or len(self.running) >= limits.max_num_seqs:
                    break
                computed_blocks, num_cached = self.cache.get_computed_blocks(request)
                request.num_computed_tokens = 0
                num_new = self._num_new_tokens(request, budget, num_cached)
                if num_new == 0:
                    break  # a whole prompt that does not fit the step (chunked prefill off)
                new_blocks = self.cache.allocate_slots(request, num_new, num_cached, computed_blocks)
                if new_blocks is None:
                    break
                self.waiting.remove(request)
                request.status = RequestStatus.RUNNING
                request.num_computed_tokens = num_cached
                self.running.append(request)
                self._known_to_runner.add(request.request_id)
                num_scheduled[request.request_id] = num_new
                budget -= num_new
                new_reqs.append(NewRequestData(
                    request.request_id, list(request.prompt_token_ids), list(request.output_token_ids),
                    request.sampling_params, self.cache.get_block_ids(request.request_id), num_cached,
                ))

        finished, self._finished_ids = self._finished_ids, []
        return SchedulerOutput(
            scheduled_new_reqs=new_reqs,
            scheduled_cached_reqs=cached_reqs,
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=sum(num_scheduled.values()),
            finished_req_ids=finished,
            preempted_req_ids=preempted,
        )

    def _num_new_tokens(self, request: Request, budget: int, num_cached: int = 0) -> int:
        """Tokens to compute for ``request`` this step (0 if it cannot be scheduled)."""
        computed = request.num_computed_tokens + num_cached
        num_new = request.num_tokens - computed
        if computed < request.num_tokens - 1:  # still prefilling (prompt, or recompute)
            if self.limits.prefill_chunk_size is not None:
                num_new = min(num_new, self.limits.prefill_chunk_size)
            if not self.limits.chunked_prefill and num_new > budget:
                return 0
        return max(0, min(num_new, budget, self.limits.max_model_len - computed))

    def _preempt(self, request: Request) -> None:
        """Recompute later: free the blocks, forget the KV, back to the front of the queue."""
        self.running.remove(request)
        self.cache.free(request.request_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)
        self._known_to_runner.discard(request.request_id)

    # -- after the model ran ---------------------------------------------------------------

    def update_from_output(self, output: SchedulerOutput) -> list[Request]:
        """Advance ``num_computed_tokens``; the requests that reached the end of their tokens
        (so a token was sampled for them this step) are returned, in scheduling order."""
        sampled = []
        for request_id, num in output.num_scheduled_tokens.items():
            request = self.requests.get(request_id)
            if request is None:
                continue
            request.num_computed_tokens += num
            if request.num_computed_tokens == request.num_tokens:
                sampled.append(request)
        return sampled
