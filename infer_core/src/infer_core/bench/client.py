"""An async OpenAI-protocol load generator (httpx, server-sent events), as ``vllm bench serve``.

Each request streams (``stream: true``, ``stream_options.include_usage``) from
``/v1/completions`` (token-id prompts) or ``/v1/chat/completions`` (W5's messages), with
``ignore_eos`` (vLLM's extension; our server has it too) so outputs have the asked length.
The clock starts when the request is sent; every chunk that carries generated text or token ids
is one token event (TTFT, ITL); the usage chunk gives the output token count. Requests are
released by a Poisson process of ``request_rate`` per second (``inf``: all at once) or at their
workload's ``arrival_offset``, and at most ``max_concurrency`` are in flight. Warm-up requests
(copies of the first request) run before the clock starts and are not counted. The server's
``/metrics`` is read before and after (:mod:`~infer_core.bench.server_view`), for its own view
of time to first token.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from infer_core.bench.metrics import RequestRecord
from infer_core.bench.progress import Progress
from infer_core.bench.server_view import scrape, server_view
from infer_core.bench.workloads import BenchRequest, Workload
from infer_core.errors import ConfigError

ERROR_TEXT_LIMIT = 300


@dataclass(frozen=True)
class ServeOptions:
    base_url: str
    model: str | None = None  # None: the first model of GET /v1/models
    api_key: str | None = None
    request_rate: float = math.inf
    max_concurrency: int | None = None  # a workload's own (W3) wins
    seed: int = 0
    num_warmups: int = 1
    timeout_s: float = 600.0
    progress: bool = True


class SSEParser:
    """Server-sent events, line by line: ``feed(line)`` returns an event's data when a blank
    line ends it (``data:`` lines of one event are joined with newlines; comments dropped)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data = []
        return data


def request_body(req: BenchRequest, model: str) -> tuple[str, dict[str, Any]]:
    """The route and JSON body of one streamed request."""
    body: dict[str, Any] = {
        "model": model, "max_tokens": req.max_tokens, "temperature": req.temperature,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }
    if req.is_chat:
        return "/v1/chat/completions", {**body, "messages": req.messages}
    return "/v1/completions", {**body, "prompt": req.prompt_token_ids}


def is_token_chunk(chunk: dict[str, Any]) -> bool:
    """Whether a streamed chunk carries generated output: text, chat content or token ids.
    A chat chunk with only the role, or a last chunk with only a finish reason, does not."""
    choices = chunk.get("choices") or []
    if not choices:
        return False
    choice = choices[0]
    if choice.get("token_ids"):
        return True
    if "delta" in choice:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            return True
        return content == "" and "role" not in delta and choice.get("finish_reason") is None
    text = choice.get("text")
    if text:
        return True
    return text == "" and choice.get("finish_reason") is None


def _error_text(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text
    return f"HTTP {status}: {message[:ERROR_TEXT_LIMIT]}"


async def send_request(client: httpx.AsyncClient, base_url: str, req: BenchRequest, model: str,
                       headers: dict[str, str]) -> RequestRecord:
    """Stream one request; failures (HTTP errors, error events, broken streams) are recorded,
    never raised."""
    path, body = request_body(req, model)
    record = RequestRecord(prompt_tokens=req.prompt_len, start=time.perf_counter(), end=0.0,
                           expected_output_tokens=req.max_tokens, tag=req.tag)
    done = False
    try:
        async with client.stream("POST", base_url.rstrip("/") + path, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                record.success, record.error = False, _error_text(resp.status_code, await resp.aread())
            else:
                parser = SSEParser()
                async for line in resp.aiter_lines():
                    data = parser.feed(line)
                    if data is None:
                        continue
                    now = time.perf_counter()
                    if data.strip() == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        err = chunk["error"]
                        message = err.get("message", err) if isinstance(err, dict) else err
                        record.success, record.error = False, f"stream error: {message}"
                        break
                    if is_token_chunk(chunk):
                        record.token_times.append(now)
                    usage = chunk.get("usage")
                    if usage:
                        record.output_tokens = usage.get("completion_tokens", record.output_tokens)
                        record.prompt_tokens = usage.get("prompt_tokens", record.prompt_tokens)
                if record.success and not done:
                    record.success, record.error = False, "the stream ended without 'data: [DONE]'"
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as exc:
        record.success, record.error = False, f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT]
    record.end = time.perf_counter()
    if record.success and not record.token_times:
        record.success, record.error = False, "no tokens were streamed"
    return record


def arrival_times(requests: Sequence[BenchRequest], rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each request is released: its own ``arrival_offset``,
    else a Poisson process of ``rate`` per second (gaps ~ Exp(rate)); ``inf``: at once."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for req in requests:
        if req.arrival_offset is not None:
            out.append(req.arrival_offset)
            continue
        out.append(t)
        if math.isfinite(rate):
            t += rng.expovariate(rate)
    return out


async def first_model(client: httpx.AsyncClient, base_url: str, headers: dict[str, str]) -> str:
    url = base_url.rstrip("/") + "/v1/models"
    try:
        resp = await client.get(url, headers=headers)
        resp.raise_for_status()
        return resp.json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"could not read the served model from {url} ({type(exc).__name__}: {exc}); is the "
            f"server up? Pass --model NAME to skip this lookup."
        ) from None


@dataclass
class ServeRun:
    records: list[RequestRecord]  # every request of the workload, warm-ups excluded
    duration_s: float
    model: str
    server: dict[str, float] | None = None  # server_view of the run (None: no usable /metrics)


async def run_workload_async(workload: Workload, opts: ServeOptions) -> ServeRun:
    concurrency = workload.max_concurrency or opts.max_concurrency
    headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(opts.timeout_s, connect=min(30.0, opts.timeout_s))
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        model = opts.model or await first_model(client, opts.base_url, headers)
        for _ in range(opts.num_warmups):
            if workload.requests:
                warm = replace(workload.requests[0], arrival_offset=None)
                record = await send_request(client, opts.base_url, warm, model, headers)
                if not record.success:
                    raise ConfigError(f"the warm-up request to {opts.base_url} failed: {record.error}")
        semaphore = asyncio.Semaphore(concurrency) if concurrency else None
        progress = Progress(len(workload.requests), workload.name, enabled=opts.progress)
        schedule = arrival_times(workload.requests, opts.request_rate, opts.seed)
        before = await scrape(client, opts.base_url, headers)
        start = time.perf_counter()

        async def one(req: BenchRequest, at: float) -> RequestRecord:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if semaphore is None:
                record = await send_request(client, opts.base_url, req, model, headers)
            else:
                async with semaphore:
                    record = await send_request(client, opts.base_url, req, model, headers)
            progress.update()
            return record

        records = await asyncio.gather(*(one(r, t) for r, t in zip(workload.requests, schedule, strict=True)))
        duration = time.perf_counter() - start
        progress.close()
        after = await scrape(client, opts.base_url, headers)
    return ServeRun(list(records), duration, model, server_view(before, after))


def run_workload(workload: Workload, opts: ServeOptions) -> ServeRun:
    return asyncio.run(run_workload_async(workload, opts))
