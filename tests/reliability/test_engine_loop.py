"""The async engine's loop survives a failure outside ``step()`` (found by the reliability work:
an exception while applying a command killed the engine thread, and every request in flight
waited forever for its end). Faults are injected into the real engine; the loop must give each
request in flight exactly one end, keep serving, and leave no KV block behind."""

from __future__ import annotations

import asyncio
import time

import pytest

from infer_core import LLM, SamplingParams
from infer_core.engine.async_engine import AsyncLLMEngine
from infer_core.testing.fixtures import tiny_checkpoint


@pytest.fixture
def llm(monkeypatch) -> LLM:
    llm = LLM(model=str(tiny_checkpoint("llama", tokenizer=True, vocab_size=512)), device="cpu",
              max_model_len=128, max_num_seqs=4, cache={"num_blocks": 8})
    execute = llm.engine.runner.launch

    def slow(*args, **kwargs):  # 10 ms a step, so that requests are still running when the test acts
        time.sleep(0.01)
        return execute(*args, **kwargs)

    monkeypatch.setattr(llm.engine.runner, "launch", slow)
    return llm


def params() -> SamplingParams:
    return SamplingParams(max_tokens=60, ignore_eos=True, temperature=0.0)


async def drain(stream) -> list:
    return [out async for out in stream]


def test_a_failing_command_ends_the_requests_in_flight_and_the_loop_goes_on(llm, monkeypatch):
    core = llm.engine
    original = core.abort_request
    calls: list[str] = []

    def broken(request_id):
        calls.append(request_id)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return original(request_id)

    async def scenario() -> None:
        engine = AsyncLLMEngine(core)
        engine.start()
        try:
            a = engine.add_request(core.make_request("one two three", params(), request_id="a"))
            b = engine.add_request(core.make_request("four five six", params(), request_id="b"))
            await a.__anext__()
            await b.__anext__()
            monkeypatch.setattr(core, "abort_request", broken)
            a.close()  # the client went away: the abort command fails on the engine thread
            rest = await asyncio.wait_for(drain(b), 10)  # b ends (error or length), exactly once
            assert rest and rest[-1].finished and sum(o.finished for o in rest) == 1
            c = engine.add_request(core.make_request("again", params(), request_id="c"))
            outs = await asyncio.wait_for(drain(c), 10)
            assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"
            assert engine.is_ready
            for _ in range(100):  # the abort of a reaches the engine in the next iterations
                if engine.num_unfinished == 0 and not core.scheduler.requests:
                    break
                await asyncio.sleep(0.01)
            assert engine.num_unfinished == 0 and not core.scheduler.requests
            assert core.cache.num_free_blocks == core.cache.num_blocks
        finally:
            engine.shutdown()

    asyncio.run(scenario())

