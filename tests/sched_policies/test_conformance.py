"""Every policy of infer-sched-policies passes the policy conformance suite, with its default
options and with the options that change its behaviour most."""

from __future__ import annotations

from infer_core.plugins import make_plugin_manager
from infer_core.testing import SchedulerPolicyConformance


class TestRoundRobin(SchedulerPolicyConformance):
    name = "round_robin"


class TestRoundRobinEveryStep(SchedulerPolicyConformance):
    name = "round_robin"
    options = {"period": 1}


class TestPriority(SchedulerPolicyConformance):
    name = "priority"


class TestPriorityWithoutPreemption(SchedulerPolicyConformance):
    name = "priority"
    options = {"preemption": False}


class TestPrefillFirst(SchedulerPolicyConformance):
    name = "prefill_first"


class TestDecodeFirst(SchedulerPolicyConformance):
    name = "decode_first"


class TestDecodeFirstTinyCap(SchedulerPolicyConformance):
    name = "decode_first"
    options = {"max_prefill_tokens": 1}


class TestStatic(SchedulerPolicyConformance):
    name = "static"


def test_registered_by_the_distribution_through_its_entry_point():
    pm = make_plugin_manager(env={})
    for name in ("round_robin", "priority", "prefill_first", "decode_first", "static"):
        spec = pm.scheduler_policies.get(name)
        assert spec.owner.name == "infer_sched_policies"
        assert spec.owner.distribution == "infer-sched-policies" and not spec.owner.builtin
