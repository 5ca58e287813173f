"""The built-in ``fcfs`` policy: the conformance suite plus its own ordering rules."""

from __future__ import annotations

from hypothesis import given

from infer_core.engine.policy import FCFSPolicy
from infer_core.testing import SchedulerPolicyConformance, SyntheticRequest
from infer_core.testing.requests import synthetic_requests


class TestFCFSConformance(SchedulerPolicyConformance):
    name = "fcfs"


def _reqs(*arrivals: float) -> list[SyntheticRequest]:
    return [SyntheticRequest(f"r{i}", arrival_time=t) for i, t in enumerate(arrivals)]


def test_orders_by_arrival_and_keeps_ties_stable():
    a, b, c, d = _reqs(3.0, 1.0, 2.0, 1.0)
    policy = FCFSPolicy()
    assert policy.order_waiting([a, b, c, d]) == [b, d, c, a]
    assert policy.order_running([a, b, c, d]) == [b, d, c, a]


def test_preempts_the_latest_arrival():
    a, b, c = _reqs(1.0, 5.0, 2.0)
    assert FCFSPolicy().pick_victim([a, b, c]) is b


@given(synthetic_requests(min_size=1))
def test_first_admitted_never_arrived_after_another_waiting(requests):
    first = FCFSPolicy().order_waiting(requests)[0]
    assert all(first.arrival_time <= r.arrival_time for r in requests)
