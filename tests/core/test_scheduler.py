"""Property tests of the unified token-budget scheduler: budgets never exceeded, every
admitted request finishes, every block comes back, FCFS admits in arrival order."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.engine.kv_cache import ContiguousCache
from infer_core.engine.policy import FCFSPolicy
from infer_core.engine.scheduler import Scheduler, SchedulerLimits
from infer_core.request import Request, RequestStatus, SamplingParams


class SmallBlocks(ContiguousCache):
    """The block pool with small blocks (the layout a paged backend presents)."""

    @classmethod
    def block_size_for(cls, configured_block_size: int, max_model_len: int) -> int:
        return configured_block_size


@dataclass
class Workload:
    limits: SchedulerLimits
    block_size: int
    num_blocks: int
    requests: list[tuple[int, int, int]]  # (arrival step, prompt length, output length)
    aborts: list[tuple[int, int]]  # (step, request index)
    contiguous: bool


@st.composite
def workloads(draw) -> Workload:
    max_model_len = draw(st.sampled_from([64, 128]))
    chunked = draw(st.booleans())
    budget = draw(st.integers(max_model_len if not chunked else 8, 256))
    limits = SchedulerLimits(
        max_num_seqs=draw(st.integers(1, 8)),
        max_num_batched_tokens=budget,
        max_model_len=max_model_len,
        chunked_prefill=chunked,
        prefill_chunk_size=draw(st.one_of(st.none(), st.integers(1, budget))) if chunked else None,
    )
    contiguous = draw(st.booleans())
    block_size = max_model_len if contiguous else draw(st.sampled_from([1, 4, 16]))
    per_request = -(-max_model_len // block_size)
    num_blocks = draw(st.integers(per_request, per_request * 4))
    n = draw(st.integers(1, 12))
    requests = []
    for _ in range(n):
        prompt = draw(st.integers(1, max_model_len - 1))
        output = draw(st.integers(1, max_model_len - prompt))
        requests.append((draw(st.integers(0, 20)), prompt, output))
    aborts = draw(st.lists(st.tuples(st.integers(0, 60), st.integers(0, n - 1)), max_size=3))
    return Workload(limits, block_size, num_blocks, requests, aborts, contiguous)


def run(w: Workload, max_steps: int = 3000):
    cache = (ContiguousCache if w.contiguous else SmallBlocks)(w.num_blocks, w.block_size)
    scheduler = Scheduler(w.limits, cache, FCFSPolicy())
    requests = [
        Request(f"r{i}", [7] * prompt, SamplingParams(max_tokens=output), arrival_time=float(arrive),
                max_tokens=output)
        for i, (arrive, prompt, output) in enumerate(w.requests)
    ]
    first_admitted: list[Request] = []
    finished: set[str] = set()
    aborted: set[str] = set()
    for step in range(max_steps):
        for i, (arrive, _, _) in enumerate(w.requests):
            if arrive == step:
                scheduler.add_request(requests[i])
        for when, i in w.aborts:
            if when == step and scheduler.finish_request(f"r{i}", RequestStatus.FINISHED_ABORTED):
                aborted.add(f"r{i}")
        out = scheduler.schedule()
        # budgets
        assert out.total_num_scheduled_tokens <= w.limits.max_num_batched_tokens
        assert len(scheduler.running) <= w.limits.max_num_seqs
        for rid, num in out.num_scheduled_tokens.items():
            req = scheduler.requests[rid]
            assert num >= 1
            assert req.num_computed_tokens + num <= min(req.num_tokens, w.limits.max_model_len)
            if w.limits.prefill_chunk_size and req.num_computed_tokens + num < req.num_tokens:
                assert num <= w.limits.prefill_chunk_size
            table = cache.get_block_ids(rid)
            assert len(table) * cache.block_size >= req.num_computed_tokens + num
        for new in out.scheduled_new_reqs:
            req = scheduler.requests[new.request_id]
            if req not in first_admitted:
                first_admitted.append(req)
        held = [b for r in scheduler.running for b in cache.get_block_ids(r.request_id)]
        assert len(held) == len(set(held)) and len(held) + cache.num_free_blocks == cache.num_blocks
        for req in scheduler.update_from_output(out):
            req.output_token_ids.append(1)
            if req.num_output_tokens == req.max_tokens:
                scheduler.finish_request(req.request_id, RequestStatus.FINISHED_LENGTH)
                finished.add(req.request_id)
        if step > 20 and not scheduler.num_unfinished:
            break
    return scheduler, cache, requests, first_admitted, finished, aborted


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_every_request_finishes_within_budgets_and_every_block_returns(w: Workload):
    scheduler, cache, requests, _, finished, aborted = run(w)
    assert scheduler.num_unfinished == 0, "the workload did not drain"
    assert finished | aborted == {r.request_id for r in requests}
    for r in requests:
        if r.request_id in finished:
            assert r.num_output_tokens == r.max_tokens
    assert cache.num_free_blocks == cache.num_blocks
    assert cache.audit([]) == {}


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_fcfs_admits_in_arrival_order(w: Workload):
    _, _, _, first_admitted, _, _ = run(w)
    arrivals = [r.arrival_time for r in first_admitted]
    assert arrivals == sorted(arrivals)


def test_chunked_prefill_splits_a_long_prompt_and_mixes_decodes():
    limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=128,
                             chunked_prefill=True)
    scheduler = Scheduler(limits, SmallBlocks(64, 4), FCFSPolicy())
    a = Request("a", [1] * 4, SamplingParams(max_tokens=8), 0.0, 8)
    b = Request("b", [1] * 40, SamplingParams(max_tokens=8), 1.0, 8)
    scheduler.add_request(a)
    scheduler.add_request(b)
    out = scheduler.schedule()
    assert out.num_scheduled_tokens == {"a": 4, "b": 12}
    for r in scheduler.update_from_output(out):
        r.output_token_ids.append(1)
    out = scheduler.schedule()
    assert out.num_scheduled_tokens == {"a": 1, "b": 15}  # a decode beside a prefill chunk


def test_preemption_frees_the_victim_and_resumes_it_first():
    limits = SchedulerLimits(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=32)
    cache = SmallBlocks(8, 4)  # 32 tokens in all
    scheduler = Scheduler(limits, cache, FCFSPolicy())
    a = Request("a", [1] * 14, SamplingParams(max_tokens=16), 0.0, 16)
    b = Request("b", [1] * 14, SamplingParams(max_tokens=16), 1.0, 16)
    scheduler.add_request(a)
    scheduler.add_request(b)
    for _ in range(6):
        out = scheduler.schedule()
        for r in scheduler.update_from_output(out):
            r.output_token_ids.append(1)
    assert b.status == RequestStatus.PREEMPTED and b.num_preemptions == 1
    assert b.num_computed_tokens == 0 and cache.get_block_ids("b") == []
    assert scheduler.waiting[0] is b
    assert "b" in out.preempted_req_ids or scheduler.num_preemptions == 1
