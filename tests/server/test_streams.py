"""Streams under stress: clients that disconnect (blocks back within one engine step, other
streams untouched), errors during generation (one error event, then [DONE]), 64 concurrent
streams with complete, correct outputs."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import openai
import pytest

from infer_core import SamplingParams

from .conftest import run_server, tiny_llm

GREEDY = dict(temperature=0, max_tokens=16, ignore_eos=True)
PROMPTS = [f"request {i}: the quick brown fox" for i in range(64)]


@pytest.fixture(scope="module")
def llm():
    return tiny_llm()


@pytest.fixture(scope="module")
def expected(llm):
    """The engine's own outputs, made before the server shares the engine."""
    return [o.outputs[0].text for o in llm.generate(PROMPTS, SamplingParams(**GREEDY))]


@pytest.fixture(scope="module")
def server(llm, expected):
    with run_server(llm) as running:
        yield running


@pytest.fixture
def aborts(server, monkeypatch):
    """Engine steps counted when each abort was asked for and when its blocks were freed."""
    record = {"asked": {}, "freed": {}}
    engine, core = server.engine, server.llm.engine
    ask, apply = engine.abort, core.abort_request

    def asked(request_id):
        record["asked"][request_id] = engine.num_steps
        ask(request_id)

    def applied(request_id):
        out = apply(request_id)
        if out is not None:
            assert core.cache.get_block_ids(request_id) == []
            record["freed"][request_id] = engine.num_steps
        return out

    monkeypatch.setattr(engine, "abort", asked)
    monkeypatch.setattr(core, "abort_request", applied)
    return record


def check_aborted_within_one_step(server, aborts):
    server.wait_idle()
    assert server.llm.engine.cache.audit([]) == {}
    assert len(aborts["freed"]) == 1, aborts
    [(request_id, freed)] = aborts["freed"].items()
    assert freed - aborts["asked"][request_id] <= 1, "blocks must be back within one step"


def run_in_thread(fn):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn()))
    thread.start()
    return thread, result


def test_disconnect_mid_stream_aborts_and_others_finish(server, expected, aborts, slow_steps):
    slow_steps(server.llm, 0.01)
    other, result = run_in_thread(lambda: stream_text(server, PROMPTS[0]))
    body = {"model": server.model, "prompt": PROMPTS[1], "max_tokens": 200, "ignore_eos": True,
            "stream": True}
    with server.http() as http, http.stream("POST", "/v1/completions", json=body) as response:
        chunks = 0
        for line in response.iter_lines():
            chunks += line.startswith("data:")
            if chunks == 3:
                break
        assert server.engine.num_unfinished >= 1  # still generating when the client leaves
    other.join(60)
    check_aborted_within_one_step(server, aborts)
    assert result["value"] == expected[0]


def stream_text(server, prompt):
    chunks = server.client().completions.create(
        model=server.model, prompt=prompt, stream=True, temperature=0, max_tokens=16,
        extra_body={"ignore_eos": True})
    return "".join(c.choices[0].text for c in chunks if c.choices)


def test_disconnect_mid_request_aborts(server, expected, aborts, slow_steps):
    slow_steps(server.llm, 0.01)
    other, result = run_in_thread(lambda: stream_text(server, PROMPTS[2]))
    body = {"model": server.model, "prompt": PROMPTS[3], "max_tokens": 200, "ignore_eos": True}
    with server.http() as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    other.join(60)
    check_aborted_within_one_step(server, aborts)
    assert result["value"] == expected[2]


def failing_at_step(monkeypatch, llm, step):
    runner = llm.engine.runner
    original = runner.launch
    calls = {"n": 0}

    def execute(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise RuntimeError("device lost")
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "launch", execute)


def sse_events(response):
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_an_error_while_streaming_is_one_error_event_then_done(server, monkeypatch, route):
    failing_at_step(monkeypatch, server.llm, 4)
    body = {"model": server.model, "max_tokens": 10, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    body.update({"prompt": "hi"} if "chat" not in route else {"messages": [{"role": "user", "content": "hi"}]})
    with server.http() as http, http.stream("POST", route, json=body) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    payloads = [json.loads(e) for e in events[:-1]]
    errors = [p for p in payloads if "error" in p]
    finishes = [c for p in payloads for c in p.get("choices", []) if c.get("finish_reason")]
    assert len(errors) == 1 and not finishes
    assert payloads[-1] is errors[0]
    assert errors[0]["error"] == {"message": "generation failed: RuntimeError: device lost.",
                                  "type": "server_error", "param": None,
                                  "code": "generation_failed", "status": 500}
    server.wait_idle()


def test_an_error_while_generating_is_500_and_the_client_raises(server, monkeypatch):
    failing_at_step(monkeypatch, server.llm, 2)
    with server.http() as http:
        response = http.post("/v1/completions", json={"model": server.model, "prompt": "hi"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "generation_failed"
    failing_at_step(monkeypatch, server.llm, 2)
    with pytest.raises(openai.APIError, match="device lost"):
        for _ in server.client().chat.completions.create(
                model=server.model, messages=[{"role": "user", "content": "hi"}], stream=True):
            pass
    server.wait_idle()


def test_64_concurrent_streams_complete_correctly(server, expected):
    client = server.async_client()

    async def one(prompt):
        text, finishes = "", []
        stream = await client.completions.create(model=server.model, prompt=prompt, stream=True,
                                                 temperature=0, max_tokens=16,
                                                 extra_body={"ignore_eos": True})
        async for chunk in stream:
            text += chunk.choices[0].text
            finishes.append(chunk.choices[0].finish_reason)
        return text, finishes

    async def main():
        async with client:
            return await asyncio.gather(*(one(p) for p in PROMPTS))

    results = asyncio.run(main())
    assert [text for text, _ in results] == expected
    for _, finishes in results:
        assert finishes[-1] == "length" and not any(finishes[:-1])
    server.wait_idle()
