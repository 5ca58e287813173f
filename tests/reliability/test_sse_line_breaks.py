"""Found by the 30-minute soak: a generated character that Python's ``str.splitlines`` takes for
a line end (U+0085, U+2028, U+2029; JSON leaves them raw) cut a ``data:`` line in two for
clients that read lines that way (httpx's ``iter_lines``, our own bench client), which then
failed to parse the event. The server now escapes them; the JSON means the same."""

from __future__ import annotations

import json

import httpx

from infer_core import LLM
from infer_core.server.streaming import sse

from .conftest import serve_in_thread, tiny_model

TEXT = "one\u2028two\x85three\u2029four"


def test_sse_escapes_what_splitlines_breaks_on():
    event = sse({"text": TEXT, "other": "é 中 😀"})
    line = event.decode()
    assert line.endswith("\n\n") and len(line.splitlines()) == 2  # the data line, the blank
    assert json.loads(line.removeprefix("data: ")) == {"text": TEXT, "other": "é 中 😀"}
    assert "é 中 😀" in line  # other characters stay as they are


def test_a_stream_carrying_them_reads_line_by_line():
    llm = LLM(model=tiny_model(), device="cpu", max_model_len=128, max_num_seqs=2, cache={"num_blocks": 8})
    with serve_in_thread(llm) as (url, app), httpx.Client(base_url=url, timeout=60) as http:
        body = {"model": app.state.server.model_name, "prompt": TEXT, "echo": True,
                "max_tokens": 4, "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as response:
            data = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]  # every line is a whole event
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text.startswith(TEXT)
