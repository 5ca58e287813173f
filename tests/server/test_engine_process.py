"""``server.engine_process``: the engine core in its own process (``EngineCoreClient``).

Real ``infer-serve`` processes on 127.0.0.1 driven by the ``openai`` client: the answers equal
the in-process engine's, the finished-request histograms and counters still reach
``/metrics``, a client that goes away frees its blocks, SIGTERM stops both processes, a core
that dies fails its streams and turns ``/health`` and ``/ready`` to 503 (never a hang), and a
start-up error in the core is one ``error:`` line. Plus the client on its own: abort,
``fail_unfinished`` and ``inspect`` across the pipe."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from infer_core import LLM, SamplingParams
from infer_core.config import EngineConfig
from infer_core.engine.core_client import EngineCoreClient
from infer_core.server.debug import engine_state
from infer_core.testing.fixtures import tiny_checkpoint

from .conftest import BIN, infer_serve

PROMPTS = ["hello there", "the capital of", "one two three four", "x"]


@pytest.fixture(scope="module")
def model() -> str:
    return str(tiny_checkpoint("llama", tokenizer=True, vocab_size=512))


@contextmanager
def serve_tiny(model: str, *args: str) -> Iterator[tuple[subprocess.Popen, str, list[str]]]:
    """``infer-serve`` on the tiny model with the engine in its own process."""
    with infer_serve("--model.path", model, "--model.device", "cpu", "--model.max_model_len", "256",
                     "--model.served_model_name", "tiny", "--cache.num_blocks", "16",
                     "--server.engine_process", "true", "--server.debug_endpoints", "true", *args) as served:
        yield served


def core_pid(url: str) -> int:
    return httpx.get(f"{url}/debug/engine", timeout=30).json()["pid"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def expected_texts(model: str, max_tokens: int) -> list[str]:
    llm = LLM(model=model, device="cpu", max_model_len=256, cache={"num_blocks": 16})
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [o.outputs[0].text for o in llm.generate(PROMPTS, params)]


def test_served_from_the_engine_process_like_in_process(model):
    want = expected_texts(model, 12)
    with serve_tiny(model) as (proc, url, _lines):
        pid = core_pid(url)
        assert pid != proc.pid and pid_alive(pid)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        batch = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=12, temperature=0,
                                          extra_body={"ignore_eos": True})
        assert [c.text for c in sorted(batch.choices, key=lambda c: c.index)] == want

        async def streamed() -> list[str]:
            aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

            async def one(prompt: str) -> str:
                stream = await aclient.completions.create(model="tiny", prompt=prompt, max_tokens=12,
                                                          temperature=0, stream=True,
                                                          extra_body={"ignore_eos": True})
                return "".join([chunk.choices[0].text async for chunk in stream])

            return list(await asyncio.gather(*(one(p) for p in PROMPTS)))

        assert asyncio.run(streamed()) == want

        # a client that goes away mid-stream: its request is aborted in the core, blocks back
        with httpx.stream("POST", f"{url}/v1/completions", timeout=30,
                          json={"model": "tiny", "prompt": "hi", "max_tokens": 200, "ignore_eos": True,
                                "stream": True}) as response:
            next(response.iter_lines())
        wait_for(lambda: (s := httpx.get(f"{url}/debug/engine", timeout=30).json())["cache"]["num_free_blocks"]
                 == s["cache"]["num_blocks"] and not s["scheduler"]["requests"])
        state = httpx.get(f"{url}/debug/engine", timeout=30).json()
        assert state["cache"]["leaks"] == {} and state["engine"]["num_streams"] == 0

        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert re.search(r'infer_request_success_total\{[^}]*finished_reason="length"[^}]*\} 8\.0', metrics), metrics
        assert re.search(r'infer_time_to_first_token_seconds_count\{[^}]*\} (8|9)\.0', metrics), metrics
        generated = re.search(r'infer_generation_tokens_total\{[^}]*\} (\d+)', metrics)
        assert generated and int(generated.group(1)) >= 8 * 12

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        wait_for(lambda: not pid_alive(pid), 10)  # no orphan


def test_a_dead_engine_process_fails_streams_and_health(model):
    with serve_tiny(model) as (proc, url, _lines):
        pid = core_pid(url)
        events: list[str] = []

        def stream() -> None:
            with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                              json={"model": "tiny", "prompt": "hi", "max_tokens": 240, "ignore_eos": True,
                                    "stream": True}) as response:
                events.extend(line for line in response.iter_lines() if line.startswith("data: "))

        thread = threading.Thread(target=stream)
        thread.start()
        wait_for(lambda: len(events) > 0)
        os.kill(pid, signal.SIGKILL)
        thread.join(30)
        assert not thread.is_alive(), "the stream hung after the engine process died"
        assert events[-1] == "data: [DONE]"
        assert "the engine process exited unexpectedly" in events[-2], events[-3:]

        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503
        assert "the engine process exited unexpectedly (exit code -9); restart the server" in health.text
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 503
        refused = httpx.post(f"{url}/v1/completions", timeout=10, json={"model": "tiny", "prompt": "hi"})
        assert refused.status_code == 503
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_a_start_up_error_in_the_engine_process_is_one_line(tmp_path):
    result = subprocess.run(
        [BIN / "infer-serve", "--model.path", str(tmp_path / "nothing"), "--model.device", "cpu",
         "--server.engine_process", "true"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(tmp_path / "nothing") in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_client_abort_fail_and_inspect_across_the_pipe(model):
    config = EngineConfig.model_validate(
        {"model": {"path": model, "device": "cpu", "max_model_len": 256}, "cache": {"num_blocks": 16}})
    client = EngineCoreClient.spawn(config)
    try:
        params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
        want = expected_texts(model, 12)

        async def scenario() -> None:
            async def collect(prompt: str) -> str:
                outs = [o async for o in client.generate(prompt, params)]
                assert outs[-1].finished
                return outs[-1].outputs[0].text

            assert list(await asyncio.gather(*(collect(p) for p in PROMPTS))) == want
            # abort: the stream closes early, the core frees the blocks
            long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
            async for _ in client.generate("hi", long):
                break
            # fail_unfinished: every request handed in ends with finish reason "error"
            stream = client.add_request(client.engine.make_request("hi", long))
            client.fail_unfinished("stopping for a test")
            outs = [o async for o in stream]
            assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "error"
            for _ in range(100):
                state = await client.inspect(engine_state)
                if state["cache"]["num_free_blocks"] == state["cache"]["num_blocks"]:
                    break
                await asyncio.sleep(0.05)
            assert state["cache"]["num_free_blocks"] == state["cache"]["num_blocks"]
            assert state["cache"]["leaks"] == {} and state["pid"] == client.pid != os.getpid()
            assert client.num_unfinished == 0 and client.num_waiting == 0

        asyncio.run(scenario())
        assert client.engine.metrics.stats.generation_tokens >= 4 * 12
    finally:
        client.shutdown()
    assert not client.is_running and client.failure is None
    wait_for(lambda: not pid_alive(client.pid), 10)
