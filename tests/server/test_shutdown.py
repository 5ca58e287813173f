"""Graceful shutdown (new requests 503, running ones finish, bounded by the drain timeout,
then exit) and the ``infer-serve`` command itself, SIGTERM included."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import openai
import pytest

from infer_core.testing.fixtures import tiny_checkpoint

from .conftest import BIN, infer_serve, run_server, tiny_llm


@pytest.fixture(scope="module")
def llm():
    return tiny_llm()


def start_stream(server, max_tokens):
    """A streamed completion in a thread; returns (thread, events) once it is running."""
    events: list[str] = []
    body = {"model": server.model, "prompt": "hi", "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True}

    def run():
        with server.http() as http, http.stream("POST", "/v1/completions", json=body) as response:
            events.extend(line[6:] for line in response.iter_lines() if line.startswith("data: "))

    thread = threading.Thread(target=run)
    thread.start()
    wait_until_running(server)
    return thread, events


def wait_until_running(server) -> None:
    deadline = time.monotonic() + 20
    while server.engine.snapshot.num_running == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_sigterm_drains_then_exits(llm, slow_steps):
    slow_steps(llm, 0.01)
    with run_server(llm, drain_timeout_s=60) as server:
        thread, events = start_stream(server, 150)
        server.uvicorn.handle_exit(signal.SIGTERM, None)
        with server.http() as http:
            refused = http.post("/v1/completions", json={"model": server.model, "prompt": "hi"})
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "shutting_down"
            assert http.get("/ready").status_code == 503
            assert http.get("/health").status_code == 200
        thread.join(60)
        finishes = [c["finish_reason"] for e in events[:-1] for c in json.loads(e)["choices"]]
        assert finishes[-1] == "length" and events[-1] == "[DONE]"
        server.thread.join(30)
        assert not server.thread.is_alive(), "the server exits once the drain is over"
        assert not server.engine.is_running


def test_the_drain_timeout_ends_what_still_runs(llm, slow_steps):
    slow_steps(llm, 0.02)
    with run_server(llm, drain_timeout_s=0.3) as server:
        thread, events = start_stream(server, 200)
        server.uvicorn.handle_exit(signal.SIGTERM, None)
        thread.join(60)
        server.thread.join(30)
        assert not server.thread.is_alive()
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert (error["status"], error["code"]) == (503, "shutting_down")  # retry elsewhere, not a 500
        assert error["message"] == ("the server shut down before the request finished "
                                    "(server.drain_timeout_s); retry on another replica or after it restarts.")
        assert llm.engine.cache.num_free_blocks == llm.engine.cache.num_blocks


def test_the_drain_timeout_answers_a_waiting_call_with_503(llm, slow_steps):
    slow_steps(llm, 0.02)
    with run_server(llm, drain_timeout_s=0.3) as server:
        answers = []
        body = {"model": server.model, "prompt": "hi", "max_tokens": 200, "ignore_eos": True}

        def run():
            with server.http() as http:
                answers.append(http.post("/v1/completions", json=body))

        thread = threading.Thread(target=run)
        thread.start()
        wait_until_running(server)
        server.uvicorn.handle_exit(signal.SIGTERM, None)
        thread.join(60)
        server.thread.join(30)
        (answer,) = answers
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
        assert answer.json()["error"]["code"] == "shutting_down"
        assert llm.engine.cache.num_free_blocks == llm.engine.cache.num_blocks


def test_infer_serve_logs_serves_and_stops_on_sigterm(tmp_path):
    model = tiny_checkpoint("llama", tokenizer=True, vocab_size=512)
    config = tmp_path / "engine.toml"
    config.write_text(f'[model]\npath = "{model}"\ndevice = "cpu"\nmax_model_len = 128\n'
                      f'served_model_name = "tiny"\n[cache]\nnum_blocks = 4\n')
    with infer_serve("--config", config, "--server.api_key", "k") as (proc, url, lines):
        log = "".join(lines)
        assert "plugin infer_core (infer-core 0.1.0): cache backend contiguous" in log
        assert "plugin infer_models_llama (infer-models-llama 0.1.0): architecture LlamaForCausalLM" in log
        assert "KV cache: 4 blocks x 128 tokens = 512 tokens" in log
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        out = client.completions.create(model="tiny", prompt="hi", max_tokens=5, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert "draining: 0 requests running" in "".join(lines)


def test_infer_serve_reports_a_bad_config_in_one_line():
    result = subprocess.run([BIN / "infer-serve", "--cache.block_size", "0"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (
        "error: invalid configuration (defaults < command line): cache.block_size: Input should "
        "be greater than or equal to 1 (got 0).\n")
