"""Property tests of the unified token-budget scheduler: budgets never exceeded, every
admitted request finishes, every block comes back, FCFS admits in arrival order; and the
policy hooks (waiting first, prefill cap, owed tokens, admission gate, preempt for a waiting
request, undoing a scheduled victim) on small hand-made cases."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings

from infer_core.engine.policy import FCFSPolicy, R
from infer_core.engine.scheduler import Scheduler, SchedulerLimits
from infer_core.request import Request, RequestStatus, SamplingParams
from infer_core.testing.caches import SmallBlockCache as SmallBlocks
from infer_core.testing.scheduling import Workload, simulate, workloads


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_every_request_finishes_within_budgets_and_every_block_returns(w: Workload):
    trace = simulate(w, FCFSPolicy())
    assert trace.drained, "the workload did not drain"
    for r in trace.requests:
        if r.request_id in trace.finished:
            assert r.num_output_tokens == r.max_tokens
    assert trace.cache.num_free_blocks == trace.cache.num_blocks
    assert trace.cache.audit([]) == {}


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_fcfs_admits_in_arrival_order(w: Workload):
    """Each step admits the longest-waiting requests first: a prefix of the queue by arrival."""
    trace = simulate(w, FCFSPolicy())
    for step in trace.steps:
        queue = sorted(step.waiting_before, key=lambda rid: trace.request(rid).arrival_time)
        assert list(step.admitted) == queue[: len(step.admitted)]


# -- the policy hooks ----------------------------------------------------------------------------


def _req(rid: str, prompt: int, arrival: float, max_tokens: int = 16, priority: int = 0) -> Request:
    return Request(rid, [1] * prompt, SamplingParams(max_tokens=max_tokens), arrival, max_tokens, priority)


def _step(scheduler: Scheduler):
    """One schedule + update, appending a token to each request that reached its end."""
    out = scheduler.schedule()
    for r in scheduler.update_from_output(out):
        r.output_token_ids.append(1)
    return out


class WaitingFirst(FCFSPolicy):
    def admit_before(self, request: R) -> bool:
        return True


def test_waiting_first_gives_a_new_prompt_the_budget_before_a_running_prefill():
    for policy, expected in ((FCFSPolicy(), {"a": 16}), (WaitingFirst(), {"b": 4, "a": 12})):
        limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=64)
        scheduler = Scheduler(limits, SmallBlocks(32, 4), policy)
        scheduler.add_request(_req("a", 40, 0.0))
        assert _step(scheduler).num_scheduled_tokens == {"a": 16}
        scheduler.add_request(_req("b", 4, 1.0))
        assert _step(scheduler).num_scheduled_tokens == expected


class Capped(FCFSPolicy):
    max_prefill_tokens = 6


def test_prefill_cap_bounds_prompt_tokens_but_not_decodes():
    limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=32, max_model_len=64)
    scheduler = Scheduler(limits, SmallBlocks(64, 4), Capped())
    for rid, prompt, t in (("a", 4, 0.0), ("b", 20, 1.0), ("c", 3, 2.0)):
        scheduler.add_request(_req(rid, prompt, t))
    assert _step(scheduler).num_scheduled_tokens == {"a": 4, "b": 2}  # c waits: cap reached
    assert _step(scheduler).num_scheduled_tokens == {"a": 1, "b": 6}  # a's decode is not capped


def test_prefill_cap_lets_the_first_whole_prompt_through_without_chunking():
    limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64,
                             chunked_prefill=False)
    scheduler = Scheduler(limits, SmallBlocks(64, 4), Capped())
    scheduler.add_request(_req("a", 10, 0.0))
    scheduler.add_request(_req("b", 3, 1.0))
    assert _step(scheduler).num_scheduled_tokens == {"a": 10}
    assert _step(scheduler).num_scheduled_tokens == {"a": 1, "b": 3}


class LongestFirst(FCFSPolicy):
    """Serves the request with the most tokens left first; optionally owes everyone a token."""

    owe_everyone = False

    def order_running(self, running: Sequence[R]) -> list[R]:
        return sorted(running, key=lambda r: r.num_computed_tokens - r.num_tokens)

    def must_serve(self, running: Sequence[R]) -> list[R]:
        return list(running) if self.owe_everyone else []


def test_must_serve_keeps_a_token_for_each_owed_request():
    for owe, expected in ((False, {"a": 16}), (True, {"a": 15, "b": 1})):
        policy = LongestFirst()
        policy.owe_everyone = owe
        limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=64)
        scheduler = Scheduler(limits, SmallBlocks(32, 4), policy)
        scheduler.add_request(_req("b", 4, 0.0))
        scheduler.add_request(_req("a", 40, 1.0))
        assert _step(scheduler).num_scheduled_tokens == {"b": 4, "a": 12}
        assert _step(scheduler).num_scheduled_tokens == expected


def test_admission_before_owed_requests_leaves_them_their_token():
    class AdmitFirstOweAll(FCFSPolicy):
        def admit_before(self, request: R) -> bool:
            return True

        def must_serve(self, running: Sequence[R]) -> list[R]:
            return list(running)

    limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=64)
    scheduler = Scheduler(limits, SmallBlocks(32, 4), AdmitFirstOweAll())
    scheduler.add_request(_req("a", 2, 0.0))
    _step(scheduler)
    scheduler.add_request(_req("b", 40, 1.0))
    assert list(_step(scheduler).num_scheduled_tokens.items()) == [("b", 15), ("a", 1)]


class Gate(FCFSPolicy):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, list[str]]] = []

    def can_admit(self, request: R, running: Sequence[R]) -> bool:
        self.seen.append((request.request_id, [r.request_id for r in running]))
        return request.priority >= 0


def test_a_refused_admission_ends_admission_for_the_step():
    limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64)
    policy = Gate()
    scheduler = Scheduler(limits, SmallBlocks(64, 4), policy)
    scheduler.add_request(_req("a", 4, 0.0))
    _step(scheduler)
    scheduler.add_request(_req("b", 4, 1.0, priority=-1))
    scheduler.add_request(_req("c", 4, 2.0))
    assert _step(scheduler).num_scheduled_tokens == {"a": 1}  # c does not overtake b
    assert policy.seen == [("a", []), ("b", ["a"])]


class PreemptsForLowerNumbers(FCFSPolicy):
    def preempt_for(self, request: R, running: Sequence[R]) -> R | None:
        lower = [r for r in running if r.priority > request.priority]
        return max(lower, key=lambda r: r.arrival_time) if lower else None


def test_preempt_for_undoes_the_victims_step_and_admits_the_waiting_request():
    limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=32)
    cache = SmallBlocks(8, 4)
    scheduler = Scheduler(limits, cache, PreemptsForLowerNumbers())
    a = _req("a", 28, 0.0)
    scheduler.add_request(a)
    assert _step(scheduler).num_scheduled_tokens == {"a": 28}
    scheduler.add_request(_req("b", 8, 1.0, priority=-1))
    out = _step(scheduler)
    assert out.num_scheduled_tokens == {"b": 8} and out.preempted_req_ids == ["a"]
    assert [c.request_id for c in out.scheduled_cached_reqs] == []
    assert a.status == RequestStatus.PREEMPTED and a.num_computed_tokens == 0
    assert scheduler.waiting[0] is a and cache.get_block_ids("a") == []
    assert len(cache.get_block_ids("b")) == 2


class LatestServedFirst(FCFSPolicy):
    def order_running(self, running: Sequence[R]) -> list[R]:
        return sorted(running, key=lambda r: -r.arrival_time)


def test_a_victim_already_scheduled_this_step_is_undone():
    limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=32)
    cache = SmallBlocks(8, 4)
    scheduler = Scheduler(limits, cache, LatestServedFirst())
    scheduler.add_request(_req("a", 16, 0.0))
    scheduler.add_request(_req("b", 14, 1.0))
    assert _step(scheduler).num_scheduled_tokens == {"a": 16, "b": 14}  # all 8 blocks held
    out = _step(scheduler)  # b's decode fits its blocks; a's needs a fifth: b is the victim
    assert out.num_scheduled_tokens == {"a": 1} and out.preempted_req_ids == ["b"]
    assert [c.request_id for c in out.scheduled_cached_reqs] == ["a"]
    assert cache.num_free_blocks == 3


def test_on_step_sees_what_was_scheduled():
    class Recorder(FCFSPolicy):
        steps: list[dict[str, int]] = []

        def on_step(self, num_scheduled_tokens):
            self.steps.append(dict(num_scheduled_tokens))

    policy = Recorder()
    policy.steps = []
    scheduler = Scheduler(SchedulerLimits(4, 64, 64), SmallBlocks(64, 4), policy)
    scheduler.schedule()
    scheduler.add_request(_req("a", 5, 0.0))
    _step(scheduler)
    assert policy.steps == [{}, {"a": 5}]
