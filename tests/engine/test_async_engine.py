"""The async engine: streams per request, aborts free blocks, a bad request fails alone."""

from __future__ import annotations

import asyncio

import pytest

from infer_core import LLM, SamplingParams
from infer_core.engine.async_engine import AsyncLLMEngine
from infer_core.errors import RequestError
from infer_core.testing.fixtures import tiny_checkpoint

PARAMS = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(model=str(tiny_checkpoint("llama", tokenizer=True, vocab_size=512)), device="cpu",
               max_model_len=128, cache={"num_blocks": 8})


@pytest.fixture
def engine(llm):
    async_engine = AsyncLLMEngine(llm.engine)
    async_engine.start()
    yield async_engine
    async_engine.shutdown()
    assert not async_engine.is_running


async def collect(engine, prompt, params=PARAMS):
    return [out async for out in engine.generate(prompt, params)]


PROMPTS = [[3, 4, 5], [9] * 30, [1, 2]]


@pytest.fixture(scope="module")
def offline(llm):
    """The offline outputs, computed before any async engine thread owns ``llm.engine``
    (the engine is single-threaded: the async engine's thread is its only stepper)."""
    return llm.generate(PROMPTS, PARAMS)


def test_streams_add_up_to_the_offline_output(offline, engine):
    prompts, expected = PROMPTS, offline

    async def main():
        return await asyncio.gather(*(collect(engine, p) for p in prompts))

    for stream, offline in zip(asyncio.run(main()), expected, strict=True):
        assert stream[-1].finished and not any(o.finished for o in stream[:-1])
        assert [t for o in stream for t in o.outputs[0].delta_token_ids] == offline.outputs[0].token_ids
        assert "".join(o.outputs[0].delta_text for o in stream) == offline.outputs[0].text
        assert stream[-1].outputs[0].finish_reason == "length"


def test_leaving_the_stream_aborts_and_frees_blocks(llm, engine):
    cache = llm.engine.cache

    async def main():
        long = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
        async for out in engine.generate([1, 2, 3], long):
            assert cache.num_free_blocks < cache.num_blocks
            if len(out.outputs[0].token_ids) >= 3:
                break  # the client went away
        for _ in range(200):
            if cache.num_free_blocks == cache.num_blocks and engine.num_unfinished == 0:
                return True
            await asyncio.sleep(0.01)
        return False

    assert asyncio.run(main())
    assert cache.audit([]) == {}


def test_a_bad_request_fails_alone(engine):
    async def main():
        good = asyncio.create_task(collect(engine, [5, 6, 7]))
        with pytest.raises(RequestError, match="the prompt is empty"):
            await collect(engine, [])
        with pytest.raises(RequestError, match="max_model_len is 128"):
            await collect(engine, [1] * 200)
        return await good

    outs = asyncio.run(main())
    assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 20


def test_a_failing_step_fails_its_requests_and_the_loop_goes_on(llm, engine, monkeypatch):
    runner = llm.engine.runner
    original = runner.launch
    calls = {"n": 0}

    def flaky(out, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return original(out, *args)

    monkeypatch.setattr(runner, "launch", flaky)

    async def main():
        first = await collect(engine, [1, 2, 3])
        second = await collect(engine, [1, 2, 3])
        return first, second

    first, second = asyncio.run(main())
    assert first[-1].outputs[0].finish_reason == "error"
    assert first[-1].error == "RuntimeError: device lost"
    assert second[-1].outputs[0].finish_reason == "length"
    assert llm.engine.cache.num_free_blocks == llm.engine.cache.num_blocks


def test_async_scheduling_behind_the_async_engine(offline):
    """The server's engine with scheduler.async_scheduling: the same streams, and an abort
    while a step is in flight frees its blocks."""
    llm = LLM(model=str(tiny_checkpoint("llama", tokenizer=True, vocab_size=512)), device="cpu",
              max_model_len=128, cache={"num_blocks": 8}, scheduler={"async_scheduling": True})
    engine = AsyncLLMEngine(llm.engine)
    engine.start()
    try:
        async def main():
            streams = await asyncio.gather(*(collect(engine, p) for p in PROMPTS))
            left = engine.generate([7, 8, 9], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
            await left.__anext__()
            await left.aclose()  # the client leaves mid-generation
            return streams

        for stream, want in zip(asyncio.run(main()), offline, strict=True):
            assert [t for o in stream for t in o.outputs[0].delta_token_ids] == want.outputs[0].token_ids
            assert stream[-1].finished and stream[-1].outputs[0].text == want.outputs[0].text
        for _ in range(200):
            if llm.engine.cache.num_free_blocks == llm.engine.cache.num_blocks and not llm.engine.scheduler.requests:
                break
            asyncio.run(asyncio.sleep(0.01))
        assert llm.engine.cache.num_free_blocks == llm.engine.cache.num_blocks
        assert not llm.engine.scheduler.requests
    finally:
        engine.shutdown()


def test_a_consumer_that_falls_behind_gets_merged_outputs(offline, engine):
    """Outputs waiting for a slow consumer come as one (deltas concatenated): fewer outputs
    than steps, the same tokens and text, the finished one last."""

    async def main():
        outs = []
        async for out in engine.generate(PROMPTS[0], PARAMS):
            outs.append(out)
            await asyncio.sleep(0.05)  # several engine steps pass meanwhile
        return outs

    outs = asyncio.run(main())
    want = offline[0].outputs[0]
    assert len(outs) < len(want.token_ids)
    assert [t for o in outs for t in o.outputs[0].delta_token_ids] == want.token_ids
    assert "".join(o.outputs[0].delta_text for o in outs) == want.text
    assert outs[-1].finished and outs[-1].outputs[0].token_ids == want.token_ids
    assert not any(o.finished for o in outs[:-1])


def test_merging_stops_at_an_error_which_comes_next():
    from infer_core.engine.async_engine import RequestStream, _Stream
    from infer_core.request import CompletionOutput, RequestOutput

    def output(ids, finished=False):
        return RequestOutput("r", None, [1], [CompletionOutput(0, "", [], delta_text="".join(map(str, ids)),
                                                               delta_token_ids=list(ids))], finished)

    class Engine:
        aborted: list[str] = []

        def abort(self, request_id):
            self.aborted.append(request_id)

    async def main():
        queue: asyncio.Queue = asyncio.Queue()
        for item in (output([1]), output([2, 3]), RuntimeError("engine gone"), output([9], True)):
            queue.put_nowait(item)
        stream = RequestStream(Engine(), "r", _Stream(asyncio.get_running_loop(), queue))
        first = await stream.__anext__()
        with pytest.raises(RuntimeError, match="engine gone"):
            await stream.__anext__()
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        return first

    first = asyncio.run(main())
    assert first.outputs[0].delta_token_ids == [1, 2, 3] and first.outputs[0].delta_text == "123"


def test_an_applied_add_counts_as_waiting_before_the_next_snapshot(llm):
    """The server refuses requests from ``num_waiting`` (pending adds + the last snapshot): a
    request the engine thread has just taken from the queue is still counted, not only from
    the snapshot published after the step (CI once saw a full queue admit a third request in
    that window)."""
    engine = AsyncLLMEngine(llm.engine)  # not started: the loop's pieces are called by hand

    async def add() -> None:
        engine.add_request(llm.engine.make_request([1, 2, 3], PARAMS))

    asyncio.run(add())
    assert engine.num_waiting == 1  # on its way to the engine thread
    engine._apply_commands()
    assert engine.num_waiting == 1  # in the scheduler, the snapshot not published yet
    engine._publish()
    assert engine.num_waiting == 1 and engine.snapshot.num_waiting == 1
    llm.engine.abort_request(next(iter(llm.engine.scheduler.requests)))
