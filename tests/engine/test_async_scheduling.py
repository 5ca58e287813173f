"""Async scheduling (``scheduler.async_scheduling``): step N+1 is scheduled and launched before
step N's sampled ids are read; those ids reach step N+1 on the device. The outputs must be
the same as running the steps in order — greedy and seeded, chunked prefill, prefix hits,
preemption in a tight cache, stop strings and stop ids that end a request while its next step
is already launched, logprobs — with every block back in the pool and nothing left over."""

from __future__ import annotations

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.testing import caches
from infer_core.testing.fixtures import tiny_checkpoint

VOCAB = 512


def make_llm(arch: str, async_scheduling: bool, cache: dict | None = None, **scheduler) -> LLM:
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=VOCAB)
    return LLM(model=str(checkpoint), plugins=[caches], device="cpu", max_model_len=160,
               scheduler={"max_num_seqs": 6, "max_num_batched_tokens": 48,
                          "async_scheduling": async_scheduling, **scheduler},
               cache={"backend": "prefix", "num_blocks": 96, "block_size": 4, **(cache or {})})


def prompts(n: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (int(k),), generator=gen).tolist()
            for k in torch.randint(1, 70, (n,), generator=gen)]


def mixed_params(n: int) -> list[SamplingParams]:
    kinds = [
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.9, seed=11, max_tokens=25, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=0, max_tokens=30, stop_token_ids=list(range(40, 90)), min_tokens=2),
        SamplingParams(temperature=0.7, seed=5, max_tokens=18, stop=["e", "a "]),
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


def summary(outputs) -> list[tuple]:
    return [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason, o.outputs[0].stop_reason,
             [(lp.token_id, round(lp.logprob, 4)) for lp in o.outputs[0].logprobs or ()]) for o in outputs]


def count_pipelined(llm: LLM) -> list[int]:
    """Count launches made while another launched step was not read back yet."""
    runner, state = llm.engine.runner, {"open": 0, "pipelined": 0}
    launch, finish = runner.launch, runner.finish

    def counting_launch(*args, **kwargs):
        if state["open"]:
            state["pipelined"] += 1
        state["open"] += 1
        return launch(*args, **kwargs)

    def counting_finish(*args, **kwargs):
        state["open"] -= 1
        return finish(*args, **kwargs)

    runner.launch, runner.finish = counting_launch, counting_finish
    return state


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_async_equals_in_order(arch):
    sync, pipelined = make_llm(arch, False), make_llm(arch, True)
    state = count_pipelined(pipelined)
    engine = pipelined.engine
    # (5, 1) twice: the second time hits blocks hashed while tokens were in flight; 12 >
    # max_num_seqs: admissions while others run
    for n, seed in ((1, 0), (5, 1), (5, 1), (12, 2)):
        batch, params = prompts(n, seed), mixed_params(n)
        assert summary(pipelined.generate(batch, params)) == summary(sync.generate(batch, params))
    assert state["pipelined"] > 20  # the overlap did happen
    assert engine.cache.prefix_cache_stats.hits > 0
    assert not engine.has_unfinished_requests() and not engine.scheduler.requests
    assert engine.cache.num_free_blocks == engine.cache.num_blocks
    assert engine.cache.audit([]) == {}


def test_async_equals_in_order_under_preemption():
    tight = {"backend": "paged", "num_blocks": 44}  # 176 tokens for 6 requests of up to ~100
    sync, pipelined = make_llm("llama", False, tight), make_llm("llama", True, tight)
    batch = prompts(10, 7)
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)] * 10
    assert summary(pipelined.generate(batch, params)) == summary(sync.generate(batch, params))
    assert pipelined.engine.scheduler.num_preemptions > 0
    assert pipelined.engine.cache.num_free_blocks == pipelined.engine.cache.num_blocks


def test_penalties_run_in_order():
    llm = make_llm("llama", True)
    state = count_pipelined(llm)
    penalized = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, repetition_penalty=1.3,
                               frequency_penalty=0.2)
    want = summary(make_llm("llama", False).generate(prompts(3, 3), penalized))
    assert summary(llm.generate(prompts(3, 3), penalized)) == want
    assert state["pipelined"] == 0


def test_waiting_requests_do_not_stop_the_overlap():
    """A queue of waiting requests (a burst of prompts larger than max_num_seqs, as W3's 32
    prompts at once) is admitted with steps in flight: the prefill steps overlap too, and the
    outputs are the in-order engine's."""
    llm = make_llm("llama", True, max_num_seqs=2)
    state = count_pipelined(llm)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    batch = prompts(8, 9)
    want = summary(make_llm("llama", False, max_num_seqs=2).generate(batch, params))
    steps = []
    step = llm.engine.step
    llm.engine.step = lambda **kw: steps.append(len(llm.engine.scheduler.waiting)) or step(**kw)
    assert summary(llm.generate(batch, params)) == want
    waiting_steps = sum(1 for w in steps if w)
    assert waiting_steps > 5 and state["pipelined"] >= len(steps) - 3


def test_streaming_and_abort_while_a_step_is_in_flight():
    llm = make_llm("llama", True)
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    for i, p in enumerate(prompts(3, 4)):
        engine.add_request(engine.make_request(p, params, request_id=f"r{i}"))
    seen: dict[str, list] = {}
    for _ in range(6):
        for out in engine.step():
            seen.setdefault(out.request_id, []).append(out)
    assert engine._inflight is not None  # a step is launched and not read back
    aborted = engine.abort_request("r1")
    assert aborted.finished and aborted.outputs[0].finish_reason == "abort"
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen.setdefault(out.request_id, []).append(out)
    for rid in ("r0", "r2"):
        outs = seen[rid]
        final = outs[-1].outputs[0]
        assert outs[-1].finished and len(final.token_ids) == 30
        assert [t for o in outs for t in o.outputs[0].delta_token_ids] == final.token_ids
    assert not any(o.finished for o in seen.get("r1", []))
    assert engine.cache.num_free_blocks == engine.cache.num_blocks and not engine.scheduler.requests
