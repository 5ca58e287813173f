"""End to end on a tiny checkpoint: every policy changes the order of work (each step's
schedule differs from fcfs) but not the text: greedy outputs equal fcfs's, request by request,
under a small step budget, few sequence slots and a cache small enough to force preemption."""

from __future__ import annotations

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.errors import RequestError
from infer_core.testing import caches
from infer_core.testing.fixtures import tiny_checkpoint

MAX_LEN = 128
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
LENGTHS = [1, 3, 17, 40, 64, 9, 100, 33]
PRIORITY = [3, 2, 1, 0, 3, 2, 1, 0]
ARRIVAL = [10.0, 11.0, 12.0, 1.0, 2.0, 3.0, 0.0, 4.0]  # the last five were queued before the first three


@pytest.fixture(scope="module")
def checkpoint():
    return tiny_checkpoint("llama", tokenizer=True, vocab_size=512)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 512, (n,), generator=gen).tolist() for n in LENGTHS]


def make_llm(checkpoint, policy: str, options: dict | None = None) -> tuple[LLM, list]:
    """An engine with the policy, and the list each step's schedule is recorded into
    ((request id, tokens) in the order served)."""
    llm = LLM(model=str(checkpoint), plugins=[caches], device="cpu", max_model_len=MAX_LEN,
              max_num_seqs=4, max_num_batched_tokens=48,
              cache={"backend": "small_blocks", "block_size": 16, "num_blocks": 12},
              scheduler={"policy": policy, "options": options or {}})
    scheduler = llm.engine.scheduler
    schedule, steps = scheduler.schedule, []

    def recording_schedule():
        out = schedule()
        steps.append(list(out.num_scheduled_tokens.items()))
        return out

    scheduler.schedule = recording_schedule
    return llm, steps


def run(checkpoint, prompts, policy: str, options: dict | None = None):
    """Greedy outputs, each step's schedule and the number of preemptions. Three prompts
    arrive at once; after two steps the other five reach the engine, older than the first
    three (queued in front of the engine, as requests are in the server), the longest oldest."""
    llm, steps = make_llm(checkpoint, policy, options)
    engine = llm.engine
    requests = [engine.make_request(p, GREEDY, arrival_time=ARRIVAL[i], priority=PRIORITY[i])
                for i, p in enumerate(prompts)]
    outputs = {}
    for request in requests[:3]:
        engine.add_request(request)
    for step in range(10_000):
        if step == 2:
            for request in requests[3:]:
                engine.add_request(request)
        outputs.update({o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished})
        if len(outputs) == 8:
            break
    assert engine.cache.num_free_blocks == engine.cache.num_blocks
    return [outputs[r.request_id] for r in requests], steps, engine.scheduler.num_preemptions


@pytest.fixture(scope="module")
def fcfs(checkpoint, prompts):
    return run(checkpoint, prompts, "fcfs")


@pytest.mark.parametrize(("policy", "options"), [
    ("round_robin", {"period": 2}),
    ("priority", {}),
    ("priority", {"preemption": False}),
    ("prefill_first", {}),
    ("decode_first", {"max_prefill_tokens": 8}),
    ("static", {}),
])
def test_same_greedy_text_as_fcfs_in_another_order(checkpoint, prompts, fcfs, policy, options):
    tokens, steps, _ = run(checkpoint, prompts, policy, options)
    fcfs_tokens, fcfs_steps, fcfs_preemptions = fcfs
    assert fcfs_preemptions > 0  # the cache is tight enough to exercise recompute
    assert steps != fcfs_steps, f"{policy} scheduled exactly as fcfs did"
    assert tokens == fcfs_tokens


def test_priority_from_generate_orders_admission(checkpoint, prompts, fcfs):
    llm, steps = make_llm(checkpoint, "priority")
    outputs = llm.generate(prompts, GREEDY, priority=PRIORITY)
    served = [rid for step in steps for rid, _ in step]
    first_served = sorted(set(served), key=served.index)
    by_priority = [outputs[i].request_id for i in sorted(range(8), key=lambda i: (PRIORITY[i], i))]
    assert first_served[:4] == by_priority[:4]  # the first four seats: priorities 0 and 1
    assert [o.outputs[0].token_ids for o in outputs] == fcfs[0]


def test_priority_argument_is_checked(checkpoint):
    llm = LLM(model=str(checkpoint), device="cpu", max_model_len=MAX_LEN,
              cache={"num_blocks": 2})
    with pytest.raises(RequestError, match=r"^got 1 priorities for 2 prompts; give one per prompt\.$"):
        llm.generate([[1], [2]], GREEDY, priority=[0])
    with pytest.raises(RequestError, match=r"^priority must be an integer, got 'high'\.$"):
        llm.generate([[1]], GREEDY, priority=["high"])
    with pytest.raises(RequestError, match=r"^priority must be a list of integers, one per prompt, got 1\.$"):
        llm.generate([[1]], GREEDY, priority=1)
    assert not llm.engine.has_unfinished_requests()
