"""Hypothesis: under random arrivals, lengths, priorities, budgets, caches (so preemption) and
aborts, the bounds docs/policies.md states hold for every policy.

No starvation, for every policy: while a request waits (from arrival, or from its preemption,
until it is admitted), every step schedules at least one token, and only for requests *ahead*
of it: those earlier in the policy's order (arrival; ``priority``: (priority, arrival)) or
running when its wait began. So its wait, in steps, is at most the work of the requests ahead
of it: sum over them of (prompt + output) * (1 + times preempted).

Per policy: ``round_robin`` serves every running request at least once every ``period``
steps; ``static`` admits nothing while anything runs; ``decode_first`` serves every decoding
request every step (and keeps its prefill cap, checked by the simulation at every step).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.engine.policy import SchedulerPolicy
from infer_core.plugins import make_plugin_manager
from infer_core.request import Request
from infer_core.testing.scheduling import Trace, Workload, simulate, workloads

bounds_settings = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def make_policy() -> Callable[[str, dict], SchedulerPolicy]:
    pm = make_plugin_manager(env={})

    def make(name: str, options: dict) -> SchedulerPolicy:
        spec = pm.scheduler_policies.get(name)
        return spec.load()(spec.validate_options(options, "scheduler"))

    return make


def by_arrival(r: Request) -> tuple:
    return (r.arrival_time,)


def by_priority(r: Request) -> tuple:
    return (r.priority, r.arrival_time)


def waits(trace: Trace) -> list[tuple[str, list[int]]]:
    """Each wait of each request: (request id, the steps it waited through)."""
    result: list[tuple[str, list[int]]] = []
    open_waits: dict[str, list[int]] = {}
    for rec in trace.steps:
        for rid in rec.waiting_before:
            if rid in rec.admitted:
                if rid in open_waits:
                    result.append((rid, open_waits.pop(rid)))
            else:
                open_waits.setdefault(rid, []).append(rec.step)
        for rid in list(open_waits):
            if rid not in rec.waiting_before:  # aborted while waiting
                open_waits.pop(rid)
    assert not open_waits or not trace.drained
    return result


def check_no_starvation(trace: Trace, key: Callable[[Request], tuple]) -> None:
    assert trace.drained, f"did not drain in {len(trace.steps)} steps"
    steps = {rec.step: rec for rec in trace.steps}
    for rid, waited in waits(trace):
        r = trace.request(rid)
        start = steps[waited[0]]
        ahead = {q.request_id for q in trace.requests if key(q) < key(r)} | start.running_before
        for t in waited:
            rec = steps[t]
            assert rec.num_scheduled, f"step {t}: nothing scheduled while {rid} waited"
            overtaking = set(rec.num_scheduled) - ahead
            assert not overtaking, f"step {t}: {sorted(overtaking)} overtook waiting {rid}"
        work = sum((q.num_prompt_tokens + q.max_tokens) * (1 + q.num_preemptions)
                   for q in trace.requests if q.request_id in ahead)
        assert len(waited) <= work, f"{rid} waited {len(waited)} steps; bound {work}"


@pytest.mark.parametrize(("name", "key"), [
    ("fcfs", by_arrival), ("round_robin", by_arrival), ("prefill_first", by_arrival),
    ("decode_first", by_arrival), ("static", by_arrival), ("priority", by_priority),
])
@bounds_settings
@given(workload=workloads(), data=st.data())
def test_no_request_starves(make_policy, name: str, key, workload: Workload, data: st.DataObject):
    options = {
        "round_robin": {"period": data.draw(st.integers(1, 5), label="period")},
        "priority": {"preemption": data.draw(st.booleans(), label="preemption")},
        "decode_first": {"max_prefill_tokens": data.draw(st.integers(1, 64), label="cap")},
    }.get(name, {})
    check_no_starvation(simulate(workload, make_policy(name, options)), key)


@bounds_settings
@given(workload=workloads(chunked=True, max_budget=32), period=st.integers(1, 5))
def test_round_robin_serves_every_running_request_every_period_steps(make_policy, workload, period):
    """Small budgets beside long prompts (some older than the running requests, so fcfs would
    give them whole steps): about one workload in six starves a running request under fcfs."""
    trace = simulate(workload, make_policy("round_robin", {"period": period}))
    unserved: dict[str, int] = {}
    for rec in trace.steps:
        unserved = {rid: n for rid, n in unserved.items() if rid in rec.running_before}
        for rid in rec.running_before:
            if rid in rec.num_scheduled or rid in rec.preempted:
                unserved.pop(rid, None)
            else:
                unserved[rid] = unserved.get(rid, 0) + 1
                assert unserved[rid] < period, f"step {rec.step}: {rid} unserved for {period} steps"
    assert trace.drained


@bounds_settings
@given(workload=workloads())
def test_static_admits_only_when_nothing_runs(make_policy, workload):
    trace = simulate(workload, make_policy("static", {}))
    for rec in trace.steps:
        assert not (rec.admitted and rec.running_before), f"step {rec.step}: admitted into a running batch"
    assert trace.drained


@bounds_settings
@given(workload=workloads(), cap=st.integers(1, 64))
def test_decode_first_serves_every_decode_every_step(make_policy, workload, cap):
    trace = simulate(workload, make_policy("decode_first", {"max_prefill_tokens": cap}))
    for rec in trace.steps:
        starved = {rid for rid in rec.decoding_before if rid not in rec.num_scheduled and rid not in rec.preempted}
        assert not starved, f"step {rec.step}: decodes {sorted(starved)} not served"
    assert trace.drained
