"""The unified token-budget scheduler (vLLM V1's design).

There are no prefill and decode phases. A request has ``num_computed_tokens`` (KV in the
cache) and ``num_tokens`` (prompt + output so far); each step hands out a budget of
``max_num_batched_tokens`` tokens over at most ``max_num_seqs`` requests, and a request gets
``min(num_tokens - num_computed_tokens, budget left, prefill chunk)``. A prefill chunk, a
decode and a prefix hit are the same arithmetic.

Running requests are served in the policy's order; when the cache cannot grow one of them,
the policy's victim is preempted (its blocks freed, recomputed later; if it was already
scheduled this step, that is undone). Waiting requests are admitted in the policy's order
while the budget, the sequence cap, the cache and the policy's ``can_admit`` allow — after
the running requests, or before the first one the policy's ``admit_before`` names. The
policy's other optional hooks (``infer_core.engine.policy``) adjust the same path: prefill
tokens may have their own cap, some running requests may be owed a token, and a waiting
request may preempt a running one.
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


@dataclass
class _StepPlan:
    """One step's plan while it is built: what is scheduled so far and the budget left.
    Scheduling a request can be undone (when it is preempted later in the same step)."""

    budget: int
    prefill_cap: int | None  # the policy's max_prefill_tokens
    num_scheduled: dict[str, int] = field(default_factory=dict)
    num_prefill: dict[str, int] = field(default_factory=dict)  # of num_scheduled, prefill tokens
    prefill_tokens: int = 0
    new_reqs: dict[str, NewRequestData] = field(default_factory=dict)
    cached_reqs: dict[str, CachedRequestData] = field(default_factory=dict)
    preempted: list[str] = field(default_factory=list)

    @property
    def prefill_left(self) -> int | None:
        return None if self.prefill_cap is None else max(0, self.prefill_cap - self.prefill_tokens)

    def add(self, request_id: str, num_tokens: int, prefill: bool) -> None:
        self.num_scheduled[request_id] = num_tokens
        self.budget -= num_tokens
        if prefill:
            self.num_prefill[request_id] = num_tokens
            self.prefill_tokens += num_tokens

    def undo(self, request_id: str) -> None:
        self.budget += self.num_scheduled.pop(request_id, 0)
        self.prefill_tokens -= self.num_prefill.pop(request_id, 0)
        self.new_reqs.pop(request_id, None)
        self.cached_reqs.pop(request_id, None)


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
        step = _StepPlan(self.limits.max_num_batched_tokens, self.policy.max_prefill_tokens)
        order = self.policy.order_running(list(self.running))
        owed = {r.request_id for r in self.policy.must_serve(order)}
        split = next((i for i, r in enumerate(order) if self.policy.admit_before(r)), len(order))
        self._serve_running(order[:split], owed, step)
        if not step.preempted:  # a step that had to preempt has no room to admit anyone
            self._admit_waiting(step, reserve=len(owed))
        self._serve_running(order[split:], owed, step)
        self.policy.on_step(dict(step.num_scheduled))

        finished, self._finished_ids = self._finished_ids, []
        return SchedulerOutput(
            scheduled_new_reqs=list(step.new_reqs.values()),
            scheduled_cached_reqs=list(step.cached_reqs.values()),
            num_scheduled_tokens=step.num_scheduled,
            total_num_scheduled_tokens=sum(step.num_scheduled.values()),
            finished_req_ids=finished,
            preempted_req_ids=step.preempted,
        )

    def _serve_running(self, order: list[Request], owed: set[str], step: _StepPlan) -> None:
        """Serve running requests in ``order``, keeping a token of the budget for each
        ``owed`` request not reached yet."""
        for request in order:
            if request.status != RequestStatus.RUNNING:  # preempted earlier in this step
                continue
            owed.discard(request.request_id)
            num_new = self._num_new_tokens(request, step, step.budget - len(owed))
            if num_new == 0:
                continue
            prefill = self._is_prefill(request)
            new_blocks = self.cache.allocate_slots(request, num_new)
            while new_blocks is None:
                victim = self.policy.pick_victim(self.running)
                self._preempt(victim, step)
                owed.discard(victim.request_id)
                if victim is request:
                    break
                new_blocks = self.cache.allocate_slots(request, num_new)
            if new_blocks is None:
                continue
            step.add(request.request_id, num_new, prefill)
            step.cached_reqs[request.request_id] = CachedRequestData(
                request.request_id, new_blocks, request.num_computed_tokens)

    def _admit_waiting(self, step: _StepPlan, reserve: int) -> None:
        """Waiting requests in the policy's order, until one cannot be admitted (nothing
        behind it overtakes it); ``reserve`` tokens of the budget stay for owed requests."""
        running_before = list(self.running)
        for request in self.policy.order_waiting(self.waiting):
            if step.budget <= reserve or not self.policy.can_admit(request, running_before):
                break
            if not self._try_admit(request, step, reserve):
                break

    def _try_admit(self, request: Request, step: _StepPlan, reserve: int) -> bool:
        """Admit ``request`` if it fits, preempting the policy's ``preempt_for`` victims while
        the sequence cap or the cache refuses it."""
        if request.num_placeholders:  # preempted with a token in flight: wait for its id
            return False
        while True:
            num_cached, computed_blocks, num_new, new_blocks = 0, [], 0, None
            if len(self.running) < self.limits.max_num_seqs:
                computed_blocks, num_cached = self.cache.get_computed_blocks(request)
                request.num_computed_tokens = 0
                num_new = self._num_new_tokens(request, step, step.budget - reserve, num_cached)
                if num_new == 0:  # out of budget, or a whole prompt that does not fit the step
                    return False
                new_blocks = self.cache.allocate_slots(request, num_new, num_cached, computed_blocks)
            if new_blocks is not None:
                break
            victim = self.policy.preempt_for(request, list(self.running))
            if victim is None:
                return False
            self._preempt(victim, step)
        self.waiting.remove(request)
        request.status = RequestStatus.RUNNING
        request.num_computed_tokens = num_cached
        self.running.append(request)
        self._known_to_runner.add(request.request_id)
        step.add(request.request_id, num_new, self._is_prefill(request))
        step.new_reqs[request.request_id] = NewRequestData(
            request.request_id, list(request.prompt_token_ids), list(request.output_token_ids),
            request.sampling_params, self.cache.get_block_ids(request.request_id), num_cached,
        )
        return True

    @staticmethod
    def _is_prefill(request: Request) -> bool:
        """More than the one token a decode computes is missing (a prompt, or recompute)."""
        return request.num_computed_tokens < request.num_tokens - 1

    def _num_new_tokens(self, request: Request, step: _StepPlan, budget: int, num_cached: int = 0) -> int:
        """Tokens to compute for ``request`` this step within ``budget`` (0 if it cannot be
        scheduled)."""
        computed = request.num_computed_tokens + num_cached
        num_new = request.num_tokens - computed
        if budget <= 0:
            return 0
        if request.num_placeholders and request.num_output_tokens + request.num_placeholders >= request.max_tokens:
            return 0  # its token in flight is its last one
        if computed < request.num_tokens - 1:  # still prefilling (prompt, or recompute)
            if self.limits.prefill_chunk_size is not None:
                num_new = min(num_new, self.limits.prefill_chunk_size)
            prefill_left = step.prefill_left
            if not self.limits.chunked_prefill:  # whole prompts only; the first of a step may pass the cap
                if num_new > budget or (prefill_left is not None and num_new > prefill_left and step.num_prefill):
                    return 0
            elif prefill_left is not None:
                num_new = min(num_new, prefill_left)
        return max(0, min(num_new, budget, self.limits.max_model_len - computed))

    def _preempt(self, request: Request, step: _StepPlan) -> None:
        """Recompute later: undo its scheduling this step, free the blocks, forget the KV,
        back to the front of the queue."""
        step.undo(request.request_id)
        step.preempted.append(request.request_id)
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
