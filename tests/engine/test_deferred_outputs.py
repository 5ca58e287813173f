"""Output processing overlapped with the next step: requests without stop strings have their
finish decided from the sampled ids when they arrive (blocks back at once) and their text made
during the next step; requests with stop strings are processed at once. Outputs are the same
as processing everything at once, in the same order per request, each request ends exactly
once, and aborts and failures in the gap lose nothing."""

from __future__ import annotations

import pytest

from infer_core import LLM, SamplingParams
from infer_core.engine.detokenizer import OutputState
from infer_core.testing import caches
from infer_core.testing.fixtures import tiny_checkpoint


@pytest.fixture(scope="module")
def llm() -> LLM:
    """The in-order engine (async scheduling off): its deferral of output processing by one
    step is what these tests pin down; async scheduling has its own tests."""
    checkpoint = tiny_checkpoint("llama", tokenizer=True, vocab_size=512)
    return LLM(model=str(checkpoint), plugins=[caches], device="cpu", max_model_len=128, max_num_seqs=8,
               max_num_batched_tokens=64, cache={"backend": "paged", "num_blocks": 64, "block_size": 4},
               scheduler={"async_scheduling": False})


def run_streaming(engine, requests):
    """Every output of every step, per request, until all are done."""
    for request in requests:
        engine.add_request(request)
    seen: dict[str, list] = {r.request_id: [] for r in requests}
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen[out.request_id].append(out)
        steps += 1
        assert steps < 500
    return seen


def reference_text(engine, request, token_ids):
    """What processing every id at once (no deferral) gives for these ids."""
    state = OutputState(engine.tokenizer, request.sampling_params, request.prompt_token_ids,
                        request.eos_token_ids, request.max_tokens)
    deltas = [state.append(t) for t in token_ids]
    return state.text, deltas[-1].finish_reason, [d.text for d in deltas]


def test_streamed_outputs_equal_processing_at_once(llm):
    engine = llm.engine
    eos = sorted(engine.eos_token_ids)
    params = [
        SamplingParams(temperature=0, max_tokens=9, ignore_eos=True),  # deferred, length
        SamplingParams(temperature=0.8, seed=3, max_tokens=12, stop_token_ids=list(range(100, 160))),  # deferred
        SamplingParams(temperature=0.8, seed=4, max_tokens=12, stop=["a", "e", " "]),  # stop strings: at once
        SamplingParams(temperature=0, max_tokens=7, min_tokens=3, stop_token_ids=eos, logprobs=1),
    ]
    requests = [engine.make_request([5 + i, 9, 17, 33], p, request_id=f"s{i}") for i, p in enumerate(params)]
    seen = run_streaming(engine, requests)
    for request in requests:
        outs = seen[request.request_id]
        assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]  # one end, last
        final = outs[-1].outputs[0]
        ids = final.token_ids
        assert [t for o in outs for t in o.outputs[0].delta_token_ids] == ids  # each id once, in order
        text, reason, deltas = reference_text(engine, request, ids)
        assert final.text == text and [o.outputs[0].delta_text for o in outs] == deltas  # one id per output
        assert final.finish_reason == reason
        if request.sampling_params.logprobs is not None:
            assert [lp.token_id for lp in final.logprobs] == ids
    assert engine.cache.num_free_blocks == engine.cache.num_blocks
    assert not engine.unfinished_request_ids()


def test_blocks_return_when_the_last_id_arrives_and_the_output_follows(llm):
    engine = llm.engine
    request = engine.make_request([1, 2, 3], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    engine.add_request(request)
    outputs = []
    while engine.scheduler.num_unfinished:
        outputs += engine.step(finished_only=True)
    # the last id was sampled: the request left the scheduler and its blocks are back, but its
    # text is made during the next step
    assert engine.cache.num_free_blocks == engine.cache.num_blocks
    assert outputs == [] and engine.has_unfinished_requests()
    assert engine.unfinished_request_ids() == [request.request_id]
    final = engine.step(finished_only=True)
    assert [o.request_id for o in final] == [request.request_id]
    assert final[0].finished and len(final[0].outputs[0].token_ids) == 3
    assert not engine.has_unfinished_requests()


def test_abort_and_failure_in_the_gap(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    done = engine.make_request([4, 5], params, request_id="gap-done")
    running = engine.make_request([4, 5], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True),
                                  request_id="gap-running")
    engine.add_request(done)
    engine.add_request(running)
    while "gap-done" in engine.scheduler.requests:
        assert not engine.step(finished_only=True)
    # finished by its ids, output not made yet: an abort is too late and changes nothing
    assert engine.abort_request("gap-done") is None
    aborted = engine.abort_request("gap-running")
    assert aborted.finished and aborted.outputs[0].finish_reason == "abort"
    outs = engine.step(finished_only=True)
    assert [o.request_id for o in outs] == ["gap-done"] and outs[0].outputs[0].finish_reason == "length"
    assert not engine.has_unfinished_requests()

    # an engine failure in the gap ends the finished-but-unreported request too, once
    failed = engine.make_request([4, 5], params, request_id="gap-failed")
    engine.add_request(failed)
    while "gap-failed" in engine.scheduler.requests:
        engine.step(finished_only=True)
    assert engine.unfinished_request_ids() == ["gap-failed"]
    outs = engine.fail_requests(engine.unfinished_request_ids(), "boom")
    assert [(o.request_id, o.outputs[0].finish_reason, o.error) for o in outs] == [("gap-failed", "error", "boom")]
    assert not engine.has_unfinished_requests() and engine.step() == []
    assert engine.cache.num_free_blocks == engine.cache.num_blocks
