"""Compare the scheduler policies on seeded synthetic workloads, in scheduler steps (no model).

    python infer_sched_policies/bench/simulate_policies.py

Runs each workload through the real scheduler and a small-block cache
(``infer_core.testing.scheduling.simulate``) and prints a markdown table per workload: steps
to drain, time to first token and inter-token gaps in steps, and preemptions. A step here is
one scheduling decision, not a unit of time: real step times grow with the tokens scheduled.
Needs the ``test`` extra of infer-core (hypothesis).
"""

from __future__ import annotations

import itertools
import random
import statistics
from dataclasses import dataclass

from infer_core.engine.scheduler import SchedulerLimits
from infer_core.plugins import make_plugin_manager
from infer_core.testing.scheduling import Trace, Workload, WorkloadRequest, simulate

POLICIES = ["fcfs", "round_robin", "priority", "prefill_first", "decode_first", "static"]


@dataclass(frozen=True)
class Scenario:
    label: str
    num_requests: int
    every: int  # steps between arrivals
    budget: int
    max_num_seqs: int
    cache_tokens: int


SCENARIOS = [
    Scenario("saturated", 200, 3, 1024, 32, 32768),
    Scenario("moderate load, small budget", 100, 40, 256, 16, 65536),
    Scenario("tight cache", 100, 5, 512, 16, 6400),
]


def workload(s: Scenario, seed: int = 0) -> Workload:
    rnd = random.Random(seed)
    requests = tuple(
        WorkloadRequest(i * s.every, rnd.randint(16, 1500), rnd.randint(16, 400), rnd.choice([0, 1, 2]))
        for i in range(s.num_requests)
    )
    return Workload(SchedulerLimits(s.max_num_seqs, s.budget, 2048), 16, s.cache_tokens // 16, requests)


def token_steps(trace: Trace) -> dict[str, list[int]]:
    """The steps at which each request sampled a token (it reached the end of its tokens)."""
    computed = {r.request_id: 0 for r in trace.requests}
    length = {r.request_id: r.num_prompt_tokens for r in trace.requests}
    steps: dict[str, list[int]] = {r.request_id: [] for r in trace.requests}
    for rec in trace.steps:
        for rid in rec.preempted:
            computed[rid] = 0
        for rid, n in rec.num_scheduled.items():
            computed[rid] += n
            if computed[rid] == length[rid]:
                steps[rid].append(rec.step)
                length[rid] += 1
    return steps


def main() -> None:
    pm = make_plugin_manager()
    for s in SCENARIOS:
        w = workload(s)
        print(f"\n{s.label}: {s.num_requests} requests, one every {s.every} steps; budget "
              f"{s.budget}, max_num_seqs {s.max_num_seqs}, {s.cache_tokens} cache tokens\n")
        print("| policy | steps | mean TTFT | p90 TTFT | mean ITL | max ITL | preemptions |")
        print("|---|---|---|---|---|---|---|")
        for name in POLICIES:
            spec = pm.scheduler_policies.get(name)
            trace = simulate(w, spec.load()(spec.validate_options({}, "scheduler")), max_steps=200_000)
            assert trace.drained, name
            tokens = token_steps(trace)
            ttft = sorted(t[0] - w.requests[int(rid[1:])].arrival_step for rid, t in tokens.items())
            gaps = [b - a for t in tokens.values() for a, b in itertools.pairwise(t)]
            print(f"| {name} | {len(trace.steps)} | {statistics.mean(ttft):.1f} | "
                  f"{ttft[int(0.9 * len(ttft))]} | {statistics.mean(gaps):.2f} | {max(gaps)} | "
                  f"{trace.scheduler.num_preemptions} |")


if __name__ == "__main__":
    main()
