"""Tensor parallelism on the CPU (gloo, worker processes): the engine split over 2 ranks gives
the greedy tokens (and logprobs) of one rank, for each architecture on tiny checkpoints and for
the real SmolLM2-135M (9 heads, 3 KV heads: 3 ranks; 2 is a configuration error); each rank
holds its share of the weights; a rank that dies ends the engine with its error, never a
hang; shutdown leaves no process behind."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.errors import ConfigError, InferError
from infer_core.testing import fixtures
from infer_core.testing.fixtures import tiny_checkpoint

PARAMS = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=2)


def make_llm(checkpoint, tp: int, **settings) -> LLM:
    return LLM(model=str(checkpoint), device="cpu", dtype="float32", max_model_len=128,
               cache={"num_blocks": 48, "block_size": 16}, parallel={"tensor_parallel_size": tp, "timeout_s": 60},
               **settings)


def prompts(vocab: int, n: int = 4) -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(1, vocab, (int(k),), generator=gen).tolist() for k in torch.randint(2, 40, (n,), generator=gen)]


def same_outputs(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        for p, q in zip(x.outputs[0].logprobs, y.outputs[0].logprobs, strict=True):
            assert p.logprob == pytest.approx(q.logprob, abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_two_ranks_equal_one(arch):
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    batch = prompts(512)
    want = make_llm(checkpoint, 1).generate(batch, PARAMS)
    llm = make_llm(checkpoint, 2)
    try:
        engine = llm.engine
        assert engine.workers is not None and engine.workers.tp.size == 2
        attn = engine.model.model.layers[0].self_attn
        assert attn.attn.layer.num_heads == 2 and attn.attn.layer.num_kv_heads == 1  # of 4 and 2
        assert engine.model.lm_head.weight.shape[0] == 256  # half the vocabulary
        same_outputs(llm.generate(batch, PARAMS), want)
        same_outputs(llm.generate(batch[:1], PARAMS), want[:1])  # alone: batch-1 steps
        assert engine.cache.num_free_blocks == engine.cache.num_blocks
    finally:
        llm.engine.shutdown()


def test_smollm2_on_three_ranks_equals_one_and_two_is_refused():
    checkpoint = fixtures.smollm2_135m_instruct()
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=1)
    batch = [[1, 2, 3, 4, 5, 6, 7, 8], list(range(100, 130))]
    want = make_llm(checkpoint, 1).generate(batch, params)
    llm = make_llm(checkpoint, 3)
    try:
        layer = llm.engine.model.model.layers[0].self_attn.attn.layer
        assert (layer.num_heads, layer.num_kv_heads) == (3, 1)
        got = llm.generate(batch, params)
        for x, y in zip(got, want, strict=True):
            assert x.outputs[0].token_ids == y.outputs[0].token_ids
            for p, q in zip(x.outputs[0].logprobs, y.outputs[0].logprobs, strict=True):
                assert p.logprob == pytest.approx(q.logprob, abs=1e-3)
    finally:
        llm.engine.shutdown()
    with pytest.raises(ConfigError, match=r"tensor_parallel_size = 2 does not divide the model's attention heads \(9\)"):
        make_llm(checkpoint, 2)


def test_a_rank_that_dies_between_steps_ends_the_engine_with_its_error():
    checkpoint = tiny_checkpoint("llama", tokenizer=True, vocab_size=512)
    llm = make_llm(checkpoint, 2)
    engine = llm.engine
    (worker,) = engine.workers._processes
    llm.generate(prompts(512, 1), PARAMS)
    engine.add_request(engine.make_request(prompts(512, 1)[0], PARAMS))
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(10)
    outputs = [o for _ in range(3) for o in engine.step()]  # the step fails its request
    assert [o.outputs[0].finish_reason for o in outputs] == ["error"]
    assert "rank 1 (exit code -9) stopped unexpectedly" in outputs[0].error
    with pytest.raises(InferError, match=r"rank 1 \(exit code -9\) stopped unexpectedly"):
        llm.generate(prompts(512, 1), PARAMS)  # and every new request gets that sentence
    assert engine.cache.num_free_blocks == engine.cache.num_blocks
    engine.shutdown()


def test_a_rank_that_dies_inside_a_step_fails_it_instead_of_hanging():
    """Rank 1 is killed just as rank 0 enters the step's forward, so rank 0 waits in a
    collective whose peer is gone: the collective fails (the connection closes) and the step
    fails with the worker's sentence."""
    checkpoint = tiny_checkpoint("llama", tokenizer=True, vocab_size=512)
    llm = make_llm(checkpoint, 2)
    engine = llm.engine
    (worker,) = engine.workers._processes
    model, forward = engine.model, engine.model.forward

    def dying(*args, **kwargs):
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        return forward(*args, **kwargs)

    model.forward = dying
    out = llm.generate(prompts(512, 2), PARAMS)
    assert all(o.outputs[0].finish_reason == "error" for o in out)
    assert "stopped unexpectedly" in out[0].error
    engine.shutdown()
    assert not worker.is_alive()


def test_shutdown_stops_every_worker():
    llm = make_llm(tiny_checkpoint("qwen3", tokenizer=True, vocab_size=512), 2)
    processes = list(llm.engine.workers._processes)
    llm.engine.shutdown()
    assert processes and not any(p.is_alive() for p in processes)
    assert all(p.exitcode == 0 for p in processes)


def test_a_dead_rank_makes_the_served_engine_unhealthy():
    """Behind the server (the threaded async engine), a rank that died is the engine's failure
    after the step that found it: ``/health`` and ``/ready`` then answer 503 with it."""
    import asyncio

    from infer_core.engine.async_engine import AsyncLLMEngine

    llm = make_llm(tiny_checkpoint("llama", tokenizer=True, vocab_size=512), 2)
    engine = AsyncLLMEngine(llm.engine)  # its loop's pieces called by hand
    (worker,) = llm.engine.workers._processes
    engine._publish()
    assert engine.failure is None and engine.snapshot.failure is None
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(10)

    async def add():
        return engine.add_request(llm.engine.make_request([1, 2, 3], PARAMS))

    asyncio.run(add())
    engine._apply_commands()  # the add finds the dead rank: the request fails with its error
    engine._publish()
    assert "rank 1 (exit code -9) stopped unexpectedly" in engine.failure
    assert engine.snapshot.failure == engine.failure
    llm.engine.shutdown()
