"""The client's protocol pieces: server-sent events, what counts as a token, request bodies and
the arrival schedule."""

from __future__ import annotations

import itertools
import json
import math
import statistics

from infer_core.bench.client import SSEParser, arrival_times, is_token_chunk, request_body
from infer_core.bench.workloads import BenchRequest


def events(text: str) -> list[str]:
    parser = SSEParser()
    out = [d for line in text.split("\n") if (d := parser.feed(line)) is not None]
    tail = parser.flush()
    return out + ([tail] if tail is not None else [])


def test_sse_events():
    stream = ': keep-alive\n\ndata: {"a": 1}\r\n\ndata:{"b": 2}\n\ndata: line one\ndata: line two\n\nevent: x\ndata: [DONE]\n\n'
    assert events(stream) == ['{"a": 1}', '{"b": 2}', "line one\nline two", "[DONE]"]
    assert events('data: {"unterminated": true}') == ['{"unterminated": true}']


def test_token_chunks():
    completion = {"choices": [{"index": 0, "text": "Hello", "finish_reason": None}]}
    held_back = {"choices": [{"index": 0, "text": "", "finish_reason": None}]}  # a token whose text waits
    finish_only = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    content = {"choices": [{"index": 0, "delta": {"content": " world"}}]}
    ids_only = {"choices": [{"index": 0, "text": "", "token_ids": [17], "finish_reason": "length"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    assert [is_token_chunk(c) for c in (completion, held_back, finish_only, role, content, ids_only, usage)] == [
        True, True, False, False, True, True, False]


def test_request_bodies():
    path, body = request_body(BenchRequest(max_tokens=4, prompt_len=2, prompt_token_ids=[5, 6]), "m")
    assert path == "/v1/completions"
    assert body == {"model": "m", "prompt": [5, 6], "max_tokens": 4, "temperature": 0.0, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True}}
    chat = BenchRequest(max_tokens=4, prompt_len=2, messages=[{"role": "user", "content": " hi"}])
    path, body = request_body(chat, "m")
    assert path == "/v1/chat/completions" and body["messages"] == chat.messages and "prompt" not in body
    json.dumps(body)


def test_arrival_schedule():
    reqs = [BenchRequest(max_tokens=1, prompt_len=1, prompt_token_ids=[1]) for _ in range(4000)]
    assert arrival_times(reqs[:5], math.inf, 0) == [0.0] * 5
    times = arrival_times(reqs, 20.0, seed=1)
    assert times == arrival_times(reqs, 20.0, seed=1) and times != arrival_times(reqs, 20.0, seed=2)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) > 0 and abs(statistics.mean(gaps) - 0.05) < 0.005  # Poisson: Exp(20) gaps
    late = BenchRequest(max_tokens=1, prompt_len=1, prompt_token_ids=[1], arrival_offset=1.5)
    assert arrival_times([reqs[0], late, reqs[1]], math.inf, 0) == [0.0, 1.5, 0.0]
