"""Each policy's ordering, victims and hooks on synthetic requests, and each one's effect on
a hand-made scheduler step."""

from __future__ import annotations

from infer_core.engine.policy import FCFSPolicy
from infer_core.engine.scheduler import Scheduler, SchedulerLimits
from infer_core.request import Request, SamplingParams
from infer_core.testing import SyntheticRequest
from infer_core.testing.caches import SmallBlockCache
from infer_sched_policies.decode_first import DecodeFirstOptions, DecodeFirstPolicy
from infer_sched_policies.prefill_first import PrefillFirstPolicy
from infer_sched_policies.priority import PriorityOptions, PriorityPolicy
from infer_sched_policies.round_robin import RoundRobinOptions, RoundRobinPolicy
from infer_sched_policies.static import StaticPolicy


def syn(rid: str, arrival: float, priority: int = 0, prompt: int = 8, output: int = 0,
        computed: int = 0) -> SyntheticRequest:
    return SyntheticRequest(rid, arrival_time=arrival, priority=priority, num_prompt_tokens=prompt,
                            num_output_tokens=output, num_computed_tokens=computed)


def ids(requests) -> list[str]:
    return [r.request_id for r in requests]


def req(rid: str, prompt: int, arrival: float, max_tokens: int = 16, priority: int = 0) -> Request:
    return Request(rid, [1] * prompt, SamplingParams(max_tokens=max_tokens), arrival, max_tokens, priority)


def step(scheduler: Scheduler) -> dict[str, int]:
    out = scheduler.schedule()
    for r in scheduler.update_from_output(out):
        r.output_token_ids.append(1)
    return out.num_scheduled_tokens


# -- priority ------------------------------------------------------------------------------------


def test_priority_orders_lower_values_first_then_by_arrival():
    a, b, c, d = syn("a", 1.0, 0), syn("b", 2.0, -1), syn("c", 0.5, 1), syn("d", 0.2, -1)
    policy = PriorityPolicy()
    assert ids(policy.order_waiting([a, b, c, d])) == ["d", "b", "a", "c"]
    assert ids(policy.order_running([a, b, c, d])) == ["d", "b", "a", "c"]
    assert policy.pick_victim([a, b, c, d]) is c  # the lowest priority
    assert policy.pick_victim([a, b, syn("e", 3.0, 1), c]).request_id == "e"  # latest of the lowest


def test_priority_preempts_only_strictly_lower_priority_for_a_waiting_request():
    low_old, low_new, same = syn("lo1", 1.0, 2), syn("lo2", 5.0, 2), syn("same", 0.0, 0)
    policy = PriorityPolicy()
    assert policy.preempt_for(syn("w", 9.0, 0), [low_old, same, low_new]) is low_new
    assert policy.preempt_for(syn("w", 9.0, 0), [same]) is None
    assert policy.preempt_for(syn("w", 9.0, 3), [low_old, same]) is None
    off = PriorityPolicy(PriorityOptions(preemption=False))
    assert off.preempt_for(syn("w", 9.0, -5), [low_old, same]) is None


def test_priority_admits_a_high_priority_request_by_preempting_a_low_one():
    limits = SchedulerLimits(max_num_seqs=1, max_num_batched_tokens=64, max_model_len=64)
    for options, expected in ((PriorityOptions(), {"hi": 4}), (PriorityOptions(preemption=False), {"lo": 1})):
        scheduler = Scheduler(limits, SmallBlockCache(64, 4), PriorityPolicy(options))
        scheduler.add_request(req("lo", 8, 0.0, priority=1))
        assert step(scheduler) == {"lo": 8}
        scheduler.add_request(req("hi", 4, 1.0, priority=0))
        assert step(scheduler) == expected  # max_num_seqs = 1: a seat only by preemption


# -- round_robin ---------------------------------------------------------------------------------


def test_round_robin_serves_least_recently_served_first():
    a, b, c = syn("a", 0.0), syn("b", 1.0), syn("c", 2.0)
    policy = RoundRobinPolicy(RoundRobinOptions(period=10))
    policy.on_step({"a": 1, "b": 1, "c": 1})  # step 0: all three admitted
    assert ids(policy.order_running([a, b, c])) == ["a", "b", "c"]
    policy.on_step({"a": 5})
    assert ids(policy.order_running([a, b, c])) == ["b", "c", "a"]
    policy.on_step({"b": 5})
    assert ids(policy.order_running([a, b, c])) == ["c", "a", "b"]
    assert policy.must_serve([a, b, c]) == []
    assert policy.pick_victim([a, b, c]) is c  # victims as fcfs


def test_round_robin_owes_a_token_after_period_steps_without_one():
    a, b = syn("a", 0.0), syn("b", 1.0)
    policy = RoundRobinPolicy(RoundRobinOptions(period=3))
    policy.on_step({"a": 1, "b": 1})  # step 0: both served
    for _ in range(2):  # steps 1, 2: only a
        assert policy.must_serve(policy.order_running([a, b])) == []
        policy.on_step({"a": 1})
    assert ids(policy.order_running([a, b])) == ["b", "a"]
    assert ids(policy.must_serve([a, b])) == ["b"]  # step 3: b's third step without a token


def test_round_robin_shares_the_budget_that_one_long_prompt_would_take():
    """An earlier arrival with a long prompt joins a running decode (queued elsewhere first):
    fcfs gives it whole steps; round_robin passes the turn around."""
    limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=128)

    def run(policy) -> list[dict[str, int]]:
        scheduler = Scheduler(limits, SmallBlockCache(64, 4), policy)
        scheduler.add_request(req("b", 2, 1.0))
        step(scheduler)
        scheduler.add_request(req("a", 60, 0.0))
        return [step(scheduler) for _ in range(4)]

    assert run(FCFSPolicy()) == [{"b": 1, "a": 15}, {"a": 16}, {"a": 16}, {"a": 13, "b": 1}]
    assert run(RoundRobinPolicy()) == [{"b": 1, "a": 15}, {"a": 16}, {"b": 1, "a": 15},
                                       {"a": 14, "b": 1}]
    assert run(RoundRobinPolicy(RoundRobinOptions(period=1))) == [
        {"b": 1, "a": 15}, {"a": 15, "b": 1}, {"a": 15, "b": 1}, {"a": 15, "b": 1}]


# -- prefill_first / decode_first ----------------------------------------------------------------


def test_prefill_first_orders_prefilling_before_decoding_and_decode_first_the_reverse():
    decoding = syn("dec", 0.0, prompt=8, output=2, computed=9)
    prefilling = syn("pre", 1.0, prompt=40, computed=16)
    fresh = syn("new", 2.0, prompt=5)
    assert ids(PrefillFirstPolicy().order_running([decoding, prefilling, fresh])) == ["pre", "new", "dec"]
    assert ids(DecodeFirstPolicy().order_running([fresh, prefilling, decoding])) == ["dec", "pre", "new"]
    assert [PrefillFirstPolicy().admit_before(r) for r in (decoding, prefilling)] == [True, False]
    assert not DecodeFirstPolicy().admit_before(decoding)
    assert DecodeFirstPolicy().max_prefill_tokens == 512
    assert DecodeFirstPolicy(DecodeFirstOptions(max_prefill_tokens=7)).max_prefill_tokens == 7


def test_prefill_first_starts_a_new_prompt_before_running_decodes():
    limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=8, max_model_len=64)
    for policy, expected in ((FCFSPolicy(), {"a": 1, "b": 1, "c": 6}),
                             (PrefillFirstPolicy(), {"c": 8})):
        scheduler = Scheduler(limits, SmallBlockCache(64, 4), policy)
        scheduler.add_request(req("a", 3, 0.0))
        scheduler.add_request(req("b", 3, 1.0))
        step(scheduler)
        scheduler.add_request(req("c", 20, 2.0))
        assert step(scheduler) == expected


def test_decode_first_serves_decodes_before_a_prefill_and_caps_prompt_tokens():
    limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=64)
    scheduler = Scheduler(limits, SmallBlockCache(64, 4), DecodeFirstPolicy(DecodeFirstOptions(max_prefill_tokens=5)))
    scheduler.add_request(req("long", 30, 0.0))
    scheduler.add_request(req("short", 2, 1.0))
    assert step(scheduler) == {"long": 5}  # the cap: short waits although the budget has room
    assert step(scheduler) == {"long": 5}
    for _ in range(4):
        step(scheduler)
    assert step(scheduler) == {"long": 1, "short": 2}
    assert step(scheduler) == {"long": 1, "short": 1}


# -- static --------------------------------------------------------------------------------------


def test_static_admits_only_when_nothing_runs():
    policy = StaticPolicy()
    assert policy.can_admit(syn("w", 1.0), [])
    assert not policy.can_admit(syn("w", 1.0), [syn("r", 0.0)])


def test_static_runs_one_batch_to_the_end_before_the_next():
    limits = SchedulerLimits(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64)
    scheduler = Scheduler(limits, SmallBlockCache(64, 4), StaticPolicy())
    scheduler.add_request(req("a", 4, 0.0, max_tokens=2))
    scheduler.add_request(req("b", 4, 0.1, max_tokens=4))
    assert step(scheduler) == {"a": 4, "b": 4}
    scheduler.add_request(req("c", 4, 1.0))
    seen = []
    for _ in range(4):
        for r in list(scheduler.running):
            if r.num_output_tokens == r.max_tokens:
                scheduler.finish_request(r.request_id, r.status.FINISHED_LENGTH)
        seen.append(step(scheduler))
    assert seen == [{"a": 1, "b": 1}, {"b": 1}, {"b": 1}, {"c": 4}]
