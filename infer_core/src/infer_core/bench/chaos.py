"""The requests of a soak: well-formed ones (streamed or not, completions or chat), ones the
client abandons at a random moment, and malformed or over-limit ones, each with what a correct
server must answer.

:func:`send` runs one request and returns its :class:`Outcome`: the status, how the stream
ended (terminal events per choice, ``[DONE]``), and every way the answer broke a guarantee
(``problems``). A well-formed request may get 200 or 503 (the queue is full); a malformed one
its 4xx (or 503). Any other 5xx is a problem, and so is a finished stream without exactly one
terminal event per choice followed by one ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "numbers",
         "12345", "and", "code", "def", "f", "x", "return", "stream", "token", "cache", "block",
         "engine", "request")
SERVER_BUSY = 503


@dataclass
class Outcome:
    kind: str
    status: int | None = None
    latency_s: float = 0.0
    cancelled: bool = False
    num_choices: int = 0
    terminal: dict[int, int] = field(default_factory=dict)  # choice index -> terminal events
    num_done: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Malformed:
    """A bad request and the statuses a correct server may answer (503 always allowed)."""

    name: str
    method: str
    path: str
    content: bytes
    expected: frozenset[int]


@dataclass(frozen=True)
class ChaosMix:
    """Shares of each kind of request (the rest are well-formed and awaited)."""

    cancel: float = 0.2
    malformed: float = 0.1
    stream: float = 0.6  # of the well-formed ones
    chat: float = 0.2


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def good_body(rng: random.Random, model: str, chat: bool, stream: bool) -> tuple[str, dict[str, Any]]:
    """A valid request: a random prompt, length, temperature; sometimes stop strings, a seed,
    ``ignore_eos`` (long outputs that fill the KV pool) or two prompts."""
    body: dict[str, Any] = {"model": model, "max_tokens": rng.randint(4, 96),
                            "temperature": rng.choice([0.0, 0.7, 1.0]), "stream": stream}
    if rng.random() < 0.5:
        body["ignore_eos"] = True
    if rng.random() < 0.2:
        body["stop"] = [rng.choice(WORDS), " " + rng.choice(WORDS)]
    if rng.random() < 0.3:
        body["seed"] = rng.randint(0, 1000)
    if stream and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    if chat:
        body["messages"] = [{"role": "user", "content": _text(rng, 3, 40)}]
        return "/v1/chat/completions", body
    body["prompt"] = [_text(rng, 3, 30), _text(rng, 3, 30)] if rng.random() < 0.1 else _text(rng, 3, 60)
    return "/v1/completions", body


def malformed_requests(model: str, max_model_len: int, max_body_bytes: int) -> list[Malformed]:
    def post(name: str, body: Any, *expected: int, path: str = "/v1/completions") -> Malformed:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return Malformed(name, "POST", path, content, frozenset(expected))

    ok = {"model": model, "prompt": "hello", "max_tokens": 4}
    return [
        post("not_json", b'{"model": ', 400),
        post("not_an_object", [1, 2], 400),
        post("missing_model", {"prompt": "hi"}, 400),
        post("missing_messages", {"model": model}, 400, path="/v1/chat/completions"),
        post("unknown_field", {**ok, "frobnicate": 1}, 422),
        post("negative_temperature", {**ok, "temperature": -1}, 422),
        post("string_max_tokens", {**ok, "max_tokens": "ten"}, 422),
        post("zero_max_tokens", {**ok, "max_tokens": 0}, 422),
        post("n_two", {**ok, "n": 2}, 422),
        post("other_model", {**ok, "model": "gpt-4"}, 404, 422),
        post("token_out_of_vocab", {**ok, "prompt": [10**9]}, 422),
        post("prompt_over_max_model_len", {**ok, "prompt": "word " * (max_model_len * 2)}, 422),
        post("too_many_stops", {**ok, "stop": ["x"] * 5000}, 422),
        post("body_too_large", {**ok, "prompt": "a" * (max_body_bytes + 1)}, 413),
        post("bad_message_role", {"model": model, "messages": [{"role": 7, "content": "x"}]},
             422, path="/v1/chat/completions"),
        Malformed("get_on_post_route", "GET", "/v1/completions", b"", frozenset({405})),
    ]


def _check_status(out: Outcome, allowed: frozenset[int] | set[int]) -> None:
    if out.status is not None and out.status not in allowed and out.status != SERVER_BUSY:
        out.problems.append(f"{out.kind}: status {out.status}, expected one of {sorted(allowed)}")


async def send_malformed(client: httpx.AsyncClient, bad: Malformed) -> Outcome:
    out = Outcome(f"malformed:{bad.name}")
    start = time.perf_counter()
    response = await client.request(bad.method, bad.path, content=bad.content,
                                    headers={"Content-Type": "application/json"})
    out.latency_s = time.perf_counter() - start
    out.status = response.status_code
    _check_status(out, bad.expected)
    return out


async def send_good(client: httpx.AsyncClient, path: str, body: dict[str, Any], kind: str,
                    cancel_after_s: float | None) -> Outcome:
    """A valid request; with ``cancel_after_s`` the client goes away after that long."""
    out = Outcome(kind)
    start = time.perf_counter()
    run = _stream(client, path, body, out) if body["stream"] else _plain(client, path, body, out)
    if cancel_after_s is None:
        await run
    else:
        try:
            await asyncio.wait_for(run, cancel_after_s)
        except TimeoutError:
            out.cancelled = True
    out.latency_s = time.perf_counter() - start
    return out


async def _plain(client: httpx.AsyncClient, path: str, body: dict[str, Any], out: Outcome) -> None:
    response = await client.post(path, json=body)
    out.status = response.status_code
    _check_status(out, {200})
    if response.status_code == 200:
        choices = response.json().get("choices", [])
        out.num_choices = len(choices)
        for choice in choices:
            out.terminal[choice["index"]] = int(choice.get("finish_reason") is not None)
        _check_terminals(out, _num_prompts(body))


async def _stream(client: httpx.AsyncClient, path: str, body: dict[str, Any], out: Outcome) -> None:
    async with client.stream("POST", path, json=body) as response:
        out.status = response.status_code
        _check_status(out, {200})
        if response.status_code != 200:
            await response.aread()
            return
        async for line in sse_lines(response):
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if out.num_done:
                out.problems.append(f"{out.kind}: data after [DONE]")
            if data == "[DONE]":
                out.num_done += 1
                continue
            try:
                event = json.loads(data)
            except json.JSONDecodeError as exc:
                out.problems.append(f"{out.kind}: unparseable event ({exc}): {data[:200]!r}")
                continue
            _stream_event(event, out)
    _check_terminals(out, _num_prompts(body))
    if out.num_done != 1:
        out.problems.append(f"{out.kind}: {out.num_done} [DONE] events")


async def sse_lines(response: httpx.Response):
    """The lines of an event stream as the SSE spec cuts them (CR LF, LF or CR only; httpx's
    ``aiter_lines`` also cuts at U+2028 and the like, which may sit inside JSON strings)."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        *lines, buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
    if buffer:
        yield buffer.decode("utf-8", errors="replace")


def _stream_event(event: dict[str, Any], out: Outcome) -> None:
    if "error" in event:
        status = event["error"].get("status")
        out.problems.append(f"{out.kind}: error event {status}: {event['error'].get('message')}")
        for index in out.terminal or {0: 0}:
            out.terminal[index] = out.terminal.get(index, 0) + 1
        return
    for choice in event.get("choices", []):
        index = choice["index"]
        out.terminal.setdefault(index, 0)
        if choice.get("finish_reason") is not None:
            out.terminal[index] += 1


def _num_prompts(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    return len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], str) else 1


def _check_terminals(out: Outcome, expected_choices: int) -> None:
    out.num_choices = len(out.terminal)
    counts = [out.terminal.get(i, 0) for i in range(expected_choices)]
    if any(c != 1 for c in counts) or len(out.terminal) != expected_choices:
        out.problems.append(f"{out.kind}: terminal events per choice {out.terminal}, expected "
                            f"exactly one for each of {expected_choices}")


async def send(client: httpx.AsyncClient, rng: random.Random, model: str, mix: ChaosMix,
               malformed: list[Malformed]) -> Outcome:
    """One random request of the soak's mix."""
    roll = rng.random()
    if roll < mix.malformed:
        return await send_malformed(client, rng.choice(malformed))
    chat = rng.random() < mix.chat
    stream = rng.random() < mix.stream
    path, body = good_body(rng, model, chat, stream)
    cancel = roll < mix.malformed + mix.cancel
    kind = ("cancel_" if cancel else "") + ("chat_" if chat else "") + ("stream" if stream else "plain")
    return await send_good(client, path, body, kind, rng.uniform(0.05, 3.0) if cancel else None)
