"""``AsyncLLMEngine``: the engine for servers. A background thread runs ``LLMEngine.step()``
in a loop; each request's outputs go to its own asyncio queue.

Callers never touch engine state: ``generate`` validates and tokenizes in the caller (so a bad
request fails there, alone), then hands the request to the engine thread through a command
queue; ``abort`` does the same, and the engine frees the request's KV blocks before its next
step. A step that raises fails the requests it held and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from infer_core.engine.llm_engine import LLMEngine
from infer_core.request import Request, RequestOutput, SamplingParams

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.05


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.num_steps = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="infer-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float | None = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def num_unfinished(self) -> int:
        with self._lock:
            return len(self._streams)

    # -- requests ----------------------------------------------------------------------------

    async def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
        add_special_tokens: bool = True,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs until it finishes. Leaving the loop early (a client
        that went away, a cancelled task) aborts the request."""
        request = self.engine.make_request(
            prompt, params, request_id=request_id, priority=priority,
            add_special_tokens=add_special_tokens,
        )
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            self._streams[request.request_id] = stream
        self._commands.put(("add", request, prompt if isinstance(prompt, str) else None))
        self._wake.set()
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        """Abort a request; its blocks are back in the pool before the next step."""
        self._commands.put(("abort", request_id))
        self._wake.set()

    # -- the engine thread --------------------------------------------------------------------

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        finished = isinstance(item, BaseException) or item.finished
        with self._lock:
            stream = self._streams.pop(request_id, None) if finished else self._streams.get(request_id)
        if stream is not None and not stream.loop.is_closed():
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                request: Request = command[1]
                try:
                    self.engine.add_request(request, command[2])
                except Exception as exc:
                    self._deliver(request.request_id, exc)
            else:
                output = self.engine.abort_request(command[1])
                if output is not None:
                    self._deliver(command[1], output)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._apply_commands()
            if not self.engine.has_unfinished_requests():
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a bug outside the model: fail what is in flight, go on
                log.exception("engine step failed")
                outputs = self.engine.fail_requests(list(self.engine.scheduler.requests), f"{type(exc).__name__}: {exc}")
            self.num_steps += 1
            for output in outputs:
                self._deliver(output.request_id, output)
        for request_id in list(self._streams):
            self._deliver(request_id, RuntimeError("the engine shut down before the request finished"))
