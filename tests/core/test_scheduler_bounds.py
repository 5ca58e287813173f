"""FCFS bounds its waits: a request waits for the work of the requests that arrived before it,
never for later ones, however arrivals, lengths, the cache and preemptions fall.

The bound (also in docs/engine.md): while ``r`` waits, every running request arrived before it
(admission is in arrival order), and each step the earliest running one computes at least one
token — it is never a victim while a later one runs, and it fits the cache alone. So the steps
``r`` waits are at most the tokens computed for earlier requests in that time:

    wait(r) <= sum over earlier j of (prompt_j + output_j + preemptions_j * max_model_len)
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.engine.kv_cache import ContiguousCache
from infer_core.engine.policy import FCFSPolicy
from infer_core.engine.scheduler import Scheduler, SchedulerLimits
from infer_core.request import Request, RequestStatus, SamplingParams


class SmallBlocks(ContiguousCache):
    @classmethod
    def block_size_for(cls, configured_block_size: int, max_model_len: int) -> int:
        return configured_block_size


@st.composite
def cases(draw):
    max_model_len = 64
    chunked = draw(st.booleans())
    limits = SchedulerLimits(
        max_num_seqs=draw(st.integers(1, 6)),
        max_num_batched_tokens=draw(st.integers(8 if chunked else max_model_len, 128)),
        max_model_len=max_model_len,
        chunked_prefill=chunked,
    )
    block_size = draw(st.sampled_from([4, 16]))
    per_request = max_model_len // block_size
    num_blocks = draw(st.integers(per_request, per_request * 3))  # tight: preemption happens
    specs = []
    for _ in range(draw(st.integers(2, 10))):
        prompt = draw(st.integers(1, max_model_len - 1))
        specs.append((draw(st.integers(0, 15)), prompt, draw(st.integers(1, max_model_len - prompt))))
    return limits, block_size, num_blocks, specs


@settings(max_examples=120, deadline=None)
@given(cases())
def test_fcfs_wait_is_bounded_by_the_work_of_earlier_arrivals(case) -> None:
    limits, block_size, num_blocks, specs = case
    scheduler = Scheduler(limits, SmallBlocks(num_blocks, block_size), FCFSPolicy())
    requests = [
        Request(f"r{i}", [5] * prompt, SamplingParams(max_tokens=out), arrival_time=float(at), max_tokens=out)
        for i, (at, prompt, out) in enumerate(specs)
    ]
    admitted_at: dict[str, int] = {}
    for step in range(5000):
        for request, (at, _, _) in zip(requests, specs, strict=True):
            if at == step:
                scheduler.add_request(request)
        out = scheduler.schedule()
        for new in out.scheduled_new_reqs:
            admitted_at.setdefault(new.request_id, step)
        for request in scheduler.update_from_output(out):
            request.output_token_ids.append(1)
            if request.num_output_tokens == request.max_tokens:
                scheduler.finish_request(request.request_id, RequestStatus.FINISHED_LENGTH)
        if step > 15 and not scheduler.num_unfinished:
            break
    assert scheduler.num_unfinished == 0

    def key(i: int) -> tuple[int, int]:
        return specs[i][0], i  # arrival, then the order of add_request

    for i, request in enumerate(requests):
        earlier = [j for j in range(len(specs)) if key(j) < key(i)]
        bound = sum(specs[j][1] + specs[j][2] + requests[j].num_preemptions * limits.max_model_len for j in earlier)
        wait = admitted_at[request.request_id] - specs[i][0]
        assert wait <= bound, (request.request_id, wait, bound)
