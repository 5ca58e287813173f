"""Servers for the server tests: the real app on real uvicorn, on 127.0.0.1 with an ephemeral
port, in a thread of the test process (so tests can look at the engine's cache directly)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from infer_core import LLM
from infer_core.config import EngineConfig, deep_merge
from infer_core.engine.async_engine import AsyncLLMEngine
from infer_core.server import create_app
from infer_core.server.shutdown import Drain, GracefulServer
from infer_core.server.state import ServerState
from infer_core.testing.fixtures import tiny_checkpoint

BIN = Path(sys.executable).parent


@dataclass
class RunningServer:
    url: str
    app: Any
    uvicorn: GracefulServer
    llm: LLM
    thread: threading.Thread
    api_key: str | None = None

    @property
    def state(self) -> ServerState:
        return self.app.state.server

    @property
    def engine(self) -> AsyncLLMEngine:
        return self.state.engine

    @property
    def model(self) -> str:
        return self.state.model_name

    def client(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.api_key or "unused")
        return openai.OpenAI(base_url=f"{self.url}/v1", max_retries=0, **kwargs)

    def async_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("api_key", self.api_key or "unused")
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", max_retries=0, **kwargs)

    def http(self, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Until no request is in the engine and every KV block is free."""
        cache = self.llm.engine.cache
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.engine.num_unfinished == 0 and cache.num_free_blocks == cache.num_blocks:
                return
            time.sleep(0.01)
        raise AssertionError(f"not idle: {self.engine.num_unfinished} unfinished, "
                             f"{cache.num_free_blocks}/{cache.num_blocks} blocks free")


@contextmanager
def run_server(llm: LLM, **server: Any) -> Iterator[RunningServer]:
    """Serve ``llm``'s engine with ``server`` settings over its config until the block ends."""
    config = EngineConfig.model_validate(deep_merge(llm.config.model_dump(), {"server": server}))
    app = create_app(AsyncLLMEngine(llm.engine), config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    uv = GracefulServer(
        uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on",
                       timeout_graceful_shutdown=5),
        Drain(app.state.server, config.server.drain_timeout_s),
    )
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = sock.getsockname()[1]
    key = server.get("api_key")
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", app, uv, llm, thread, key)
    finally:
        uv.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def read_lines(stream, into: list[str]) -> threading.Thread:
    """A daemon thread appending ``stream``'s lines to ``into`` (a child's stderr)."""
    thread = threading.Thread(target=lambda: into.extend(iter(stream.readline, "")), daemon=True)
    thread.start()
    return thread


@contextmanager
def infer_serve(*args: str | os.PathLike) -> Iterator[tuple[subprocess.Popen, str, list[str]]]:
    """The ``infer-serve`` command with ``args`` on an ephemeral port, until the block ends:
    ``(process, base URL, its stderr lines so far)``; killed at the end if still running."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([BIN / "infer-serve", *args, "--server.port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []
    reader = read_lines(proc.stderr, lines)
    try:
        deadline = time.monotonic() + 120
        while not any("Uvicorn running on" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        port = re.search(r"http://127\.0\.0\.1:(\d+)", "".join(lines)).group(1)
        yield proc, f"http://127.0.0.1:{port}", lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)


def tiny_llm(**overrides: Any) -> LLM:
    settings: dict[str, Any] = dict(device="cpu", max_model_len=256, max_num_seqs=32,
                                    max_num_batched_tokens=1024)
    settings.update(overrides)
    settings["cache"] = {"num_blocks": 16, **overrides.get("cache", {})}
    return LLM(model=str(tiny_checkpoint("llama", tokenizer=True, vocab_size=512)), **settings)


@pytest.fixture
def slow_steps(monkeypatch):
    """``slow_steps(llm, seconds)``: every engine step of ``llm`` takes at least ``seconds``,
    so that a request is still running when the test acts on it."""

    def slow(llm: LLM, seconds: float) -> None:
        runner = llm.engine.runner
        original = runner.launch

        def execute(*args, **kwargs):  # launch(out, while_running=None)
            time.sleep(seconds)
            return original(*args, **kwargs)

        monkeypatch.setattr(runner, "launch", execute)

    return slow
