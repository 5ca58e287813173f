"""``GET /debug/engine``: absent unless ``server.debug_endpoints``, behind the API key, and
during a request it shows the request and its blocks; after it, nothing."""

from __future__ import annotations

import time

import httpx

from infer_core import LLM

from .conftest import serve_in_thread, tiny_model


def tiny() -> LLM:
    return LLM(model=tiny_model(), device="cpu", max_model_len=128, max_num_seqs=4, cache={"num_blocks": 8})


def test_off_by_default_and_behind_the_key():
    llm = tiny()
    with serve_in_thread(llm) as (url, _):
        assert httpx.get(f"{url}/debug/engine").status_code == 404
    with serve_in_thread(llm, debug_endpoints=True, api_key="k") as (url, _):
        assert httpx.get(f"{url}/debug/engine").status_code == 401
        state = httpx.get(f"{url}/debug/engine", headers={"Authorization": "Bearer k"}).json()
        assert state["cache"]["num_owned_blocks"] == 0 and state["scheduler"]["requests"] == {}


def test_shows_a_running_request_then_nothing(monkeypatch):
    llm = tiny()
    execute = llm.engine.runner.launch

    def slow(*args, **kwargs):  # 20 ms a step: the request still runs when the test looks
        time.sleep(0.02)
        return execute(*args, **kwargs)

    monkeypatch.setattr(llm.engine.runner, "launch", slow)
    with serve_in_thread(llm, debug_endpoints=True) as (url, app), httpx.Client(base_url=url) as http:
        model = app.state.server.model_name
        body = {"model": model, "prompt": "hello there", "max_tokens": 100, "ignore_eos": True,
                "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()  # one iterator: dropping one closes the response
            next(lines)  # the first chunk: the request runs
            state = http.get("/debug/engine").json()
            assert list(state["scheduler"]["requests"].values()) == ["RUNNING"], state
            assert state["cache"]["num_owned_blocks"] > 0 and state["engine"]["num_streams"] == 1
            for _ in lines:
                pass
        state = http.get("/debug/engine").json()
        assert state["cache"]["num_owned_blocks"] == 0 and not state["cache"]["leaks"]
        assert state["engine"]["num_streams"] == 0 and state["engine"]["num_output_states"] == 0
