"""Clients that go away after their request is admitted but before the first byte of the
answer: the request is aborted within a step (dropped from the scheduler, its KV blocks back)
and the requests around it are untouched. Each test puts the request in one of the places it
can be while no byte has been sent, and closes the client's socket exactly there:

- waiting in the scheduler behind running requests (``max_num_seqs`` is full);
- on its way to the engine thread (the engine is held inside a step);
- in its prefill (a long prompt in chunks of 8 tokens: it runs and holds blocks, no token yet).

How the client is made to leave "after admission, before the first byte": ``ServerState.admit``
is wrapped so that, once the requests are handed to the engine, the handler holds the event
loop until the test has checked that no byte arrived and closed its socket. For streams, the
start of the response can also be delayed (``late_start``), so that uvicorn has already seen
the disconnect when litestar starts the body: its listener gets ``http.disconnect`` before the
response task ever ran (the harshest order).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
from litestar.response.streaming import ASGIStreamingResponse

from infer_core import SamplingParams

from .conftest import run_server, tiny_llm

STEP_S = 0.01
AHEAD = ["request 0: the quick brown fox", "request 1: jumps over the lazy dog"]
AHEAD_TOKENS = 120  # about 1.2 s of steps: the requests ahead outlive the test's client
LONG_PROMPT = [5 + i % 300 for i in range(224)]  # 28 prefill chunks of 8 tokens


@pytest.fixture(scope="module")
def llm():
    # Two running at most (a third waits); prefill in chunks of 8; paged blocks, so that a
    # request in its prefill owns some.
    return tiny_llm(max_num_seqs=2, prefill_chunk_size=8, cache={"backend": "paged", "num_blocks": 64})


@pytest.fixture(scope="module")
def expected(llm):
    """The requests ahead, run alone before the server shares the engine."""
    params = SamplingParams(temperature=0, max_tokens=AHEAD_TOKENS, ignore_eos=True)
    return [o.outputs[0].text for o in llm.generate(AHEAD, params)]


@pytest.fixture(scope="module")
def server(llm, expected):
    with run_server(llm, debug_endpoints=True) as running:
        yield running


class Steps:
    """Every engine step takes ``STEP_S``; after :meth:`hold` the next one waits (the engine
    thread inside a step) until :meth:`release`."""

    def __init__(self, llm, monkeypatch) -> None:
        self._hold, self.held, self._release = threading.Event(), threading.Event(), threading.Event()
        original = llm.engine.runner.launch

        def execute(*args, **kwargs):
            if self._hold.is_set():
                self._hold.clear()
                self.held.set()
                self._release.wait(20)
            time.sleep(STEP_S)
            return original(*args, **kwargs)

        monkeypatch.setattr(llm.engine.runner, "launch", execute)

    def hold(self) -> None:
        self._hold.set()
        assert self.held.wait(10), "the engine did not step"

    def release(self) -> None:
        self._release.set()


class Admission:
    """``ServerState.admit`` that, once the requests are handed to the engine, holds the
    server's event loop until the test closed the client (so not one byte was sent)."""

    def __init__(self, server, monkeypatch) -> None:
        self.admitted, self.closed = threading.Event(), threading.Event()
        self.ids: list[str] = []
        self.released_step = -1
        original = server.state.admit

        def admit(requests, prompts):
            streams = original(requests, prompts)
            self.ids = [r.request_id for r in requests]
            self.admitted.set()
            self.closed.wait(20)
            time.sleep(0.02)  # the client's FIN is at the server's socket
            self.released_step = server.engine.num_steps
            return streams

        monkeypatch.setattr(server.state, "admit", admit)


@pytest.fixture
def record(server, monkeypatch):
    """For each abort: the engine step when it was asked and when it was applied, what the
    request was then (status, computed tokens, output tokens, blocks), and its blocks after."""
    out = {"asked": {}, "applied": {}}
    engine, core = server.engine, server.llm.engine
    ask, apply = engine.abort, core.abort_request

    def asked(request_id):
        out["asked"].setdefault(request_id, engine.num_steps)
        ask(request_id)

    def applied(request_id):
        request = core.scheduler.requests.get(request_id)
        before = None if request is None else (
            request.status.name, request.num_computed_tokens, len(request.output_token_ids),
            len(core.cache.get_block_ids(request_id)), len(core.scheduler.running))
        result = apply(request_id)
        if result is not None:
            out["applied"][request_id] = (engine.num_steps, before, core.cache.get_block_ids(request_id))
        return result

    monkeypatch.setattr(engine, "abort", asked)
    monkeypatch.setattr(core, "abort_request", applied)
    return out


def body_of(server, route, stream, prompt):
    body = {"model": server.model, "max_tokens": 200, "ignore_eos": True, "temperature": 0,
            "stream": stream}
    if route == "chat":
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", {**body, "prompt": prompt}


def leave_after_admission(server, admission, path, body) -> None:
    """Send the request on a raw socket; once it is admitted, check that no byte of the answer
    came, and close the socket."""
    host, port = server.url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        assert admission.admitted.wait(20), "the request was not admitted"
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # not one byte yet
    finally:
        sock.close()
        admission.closed.set()


def wait_for(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def start_ahead(server, prompts):
    """Stream ``prompts`` (greedy) in threads; the texts land in the returned dict."""
    texts: dict[int, str] = {}

    def one(i, prompt):
        chunks = server.client().completions.create(
            model=server.model, prompt=prompt, stream=True, temperature=0,
            max_tokens=AHEAD_TOKENS, extra_body={"ignore_eos": True})
        texts[i] = "".join(c.choices[0].text for c in chunks if c.choices)

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    wait_for(lambda: server.engine.snapshot.num_running == len(prompts), "the requests ahead did not start")
    return threads, texts


def check_clean(server, threads, texts, expected):
    for t in threads:
        t.join(60)
    assert [texts.get(i) for i in range(len(threads))] == expected[:len(threads)]
    server.wait_idle()
    with server.http() as http:
        picture = http.get("/debug/engine").json()
    assert picture["cache"]["num_owned_blocks"] == 0 and not picture["cache"]["leaks"], picture
    assert picture["scheduler"]["requests"] == {} and picture["engine"]["num_streams"] == 0, picture


def delay_response_start(monkeypatch) -> None:
    """Streams start their response 0.2 s late (standing for any await between admission
    and the first byte): by then uvicorn has seen the client go."""
    original = ASGIStreamingResponse.start_response

    async def start_response(self, send):
        await asyncio.sleep(0.2)
        await original(self, send)

    monkeypatch.setattr(ASGIStreamingResponse, "start_response", start_response)


QUEUED = [  # (route, stream, two prompts, late start)
    ("completions", False, False, False),
    ("completions", False, True, False),
    ("completions", True, False, False),
    ("completions", True, True, False),
    ("completions", True, False, True),
    ("chat", False, False, False),
    ("chat", True, False, False),
    ("chat", True, False, True),
]


@pytest.mark.parametrize(("route", "stream", "two", "late_start"), QUEUED,
                         ids=["-".join(str(v) for v in case) for case in QUEUED])
def test_a_queued_request_is_dropped_without_running(server, expected, record, monkeypatch,
                                                     route, stream, two, late_start):
    Steps(server.llm, monkeypatch)
    if late_start:
        delay_response_start(monkeypatch)
    threads, texts = start_ahead(server, AHEAD)  # max_num_seqs is full: the next one waits
    admission = Admission(server, monkeypatch)
    prompt = ["hello there", "general kenobi"] if two else "hello there"
    leave_after_admission(server, admission, *body_of(server, route, stream, prompt))
    ids = admission.ids
    assert len(ids) == (2 if two else 1)
    wait_for(lambda: all(i in record["applied"] for i in ids), f"not aborted: {record}")
    for request_id in ids:
        step, before, blocks_after = record["applied"][request_id]
        status, computed, generated, _, running = before
        assert (status, computed, generated) == ("WAITING", 0, 0)  # never ran
        assert running == 2 and blocks_after == []  # the requests ahead still ran
        # the engine applied the abort before its next step, soon after the server could see it
        assert step - record["asked"][request_id] <= 1
        assert record["asked"][request_id] - admission.released_step <= 2 + 20 * late_start
    check_clean(server, threads, texts, expected)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_on_its_way_to_the_engine_is_dropped_before_it_runs(server, expected, record,
                                                                     monkeypatch, stream):
    steps = Steps(server.llm, monkeypatch)
    threads, texts = start_ahead(server, AHEAD[:1])  # room for one more: it would run
    admission = Admission(server, monkeypatch)
    steps.hold()  # the engine thread is inside a step: the request waits in its command queue
    try:
        leave_after_admission(server, admission, *body_of(server, "completions", stream, "hello there"))
        [request_id] = admission.ids
        wait_for(lambda: request_id in record["asked"], "the server did not see the client go")
        assert server.engine.num_pending_adds == 1  # the engine has not seen the request yet
    finally:
        steps.release()
    wait_for(lambda: request_id in record["applied"], f"not aborted: {record}")
    step, before, blocks_after = record["applied"][request_id]
    assert before[:3] == ("WAITING", 0, 0) and blocks_after == []  # added and dropped at once
    assert step - record["asked"][request_id] <= 1  # the held step ends, then the abort
    check_clean(server, threads, texts, expected)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_in_its_prefill_is_aborted_and_its_blocks_return(server, record, monkeypatch,
                                                                  stream):
    Steps(server.llm, monkeypatch)
    admission = Admission(server, monkeypatch)
    leave_after_admission(server, admission, *body_of(server, "completions", stream, LONG_PROMPT))
    [request_id] = admission.ids
    wait_for(lambda: request_id in record["applied"], f"not aborted: {record}")
    step, before, blocks_after = record["applied"][request_id]
    status, computed, generated, blocks, _ = before
    assert status == "RUNNING" and 0 < computed < len(LONG_PROMPT) and generated == 0, before
    assert blocks > 0 and blocks_after == []
    assert step - record["asked"][request_id] <= 1
    assert record["asked"][request_id] - admission.released_step <= 2
    check_clean(server, [], {}, [])
