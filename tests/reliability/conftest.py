"""Servers for the reliability tests: the real app on real uvicorn (127.0.0.1, an ephemeral
port) in a thread, or a real ``infer-serve`` subprocess started by the soak harness."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from infer_core import LLM
from infer_core.config import EngineConfig, deep_merge
from infer_core.engine.async_engine import AsyncLLMEngine
from infer_core.server import create_app
from infer_core.server.shutdown import Drain, GracefulServer
from infer_core.testing.fixtures import tiny_checkpoint


def tiny_model() -> str:
    return str(tiny_checkpoint("llama", tokenizer=True, vocab_size=512))


@contextmanager
def serve_in_thread(llm: LLM, **server: Any) -> Iterator[tuple[str, Any]]:
    """``llm`` served on uvicorn in a thread until the block ends: (base URL, app)."""
    config = EngineConfig.model_validate(deep_merge(llm.config.model_dump(), {"server": server}))
    app = create_app(AsyncLLMEngine(llm.engine), config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    uv = GracefulServer(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on",
                                       timeout_graceful_shutdown=5),
                        Drain(app.state.server, config.server.drain_timeout_s))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        uv.should_exit = True
        thread.join(30)
        sock.close()
