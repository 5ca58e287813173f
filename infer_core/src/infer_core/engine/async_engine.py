"""``AsyncLLMEngine``: the engine for servers. A background thread runs ``LLMEngine.step()``
in a loop; each request's outputs go to its own asyncio queue.

Callers never touch engine state: ``generate`` validates and tokenizes in the caller (so a bad
request fails there, alone), then hands the request to the engine thread through a command
queue; ``abort`` does the same, and the engine frees the request's KV blocks before its next
step. A step that raises fails the requests it held and the loop goes on.

For a server, :meth:`AsyncLLMEngine.add_request` takes a request made with
``engine.make_request`` and returns its :class:`RequestStream` at once (so a handler can
validate several requests before starting any), :attr:`~AsyncLLMEngine.num_waiting` counts the
requests not yet running (for a queue limit), :attr:`~AsyncLLMEngine.is_ready` says the loop
is stepping, :meth:`~AsyncLLMEngine.fail_unfinished` ends what is left at shutdown, and
finished-request timings reach listeners added with
:meth:`~AsyncLLMEngine.add_finished_listener` (called on the engine thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from infer_core.engine.llm_engine import LLMEngine
from infer_core.errors import RequestError
from infer_core.request import Request, RequestMetrics, RequestOutput, SamplingParams

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.05

FinishedRecord = tuple[RequestMetrics, list[float], str | None]


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


@dataclass(frozen=True)
class EngineSnapshot:
    """Gauges published by the engine thread after each loop iteration."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    failure: str | None = None  # the engine cannot go on (a tensor-parallel rank died)


def _put_all(items: list[tuple[asyncio.Queue, RequestOutput | BaseException]]) -> None:
    for q, item in items:
        q.put_nowait(item)


def merge_outputs(first: RequestOutput, later: RequestOutput) -> RequestOutput:
    """``later`` (cumulative fields are its own) with the deltas of both: what one output for
    the two steps would have been."""
    completions = [
        dataclasses.replace(b, delta_text=a.delta_text + b.delta_text,
                            delta_token_ids=a.delta_token_ids + b.delta_token_ids)
        for a, b in zip(first.outputs, later.outputs, strict=True)
    ]
    return dataclasses.replace(later, outputs=completions)


class RequestStream:
    """The outputs of one request, in order, as an async iterator that ends after the
    finished output. An exception delivered for the request (it could not be added, the engine
    shut down) is raised from the iterator. :meth:`close` aborts the request if it has not
    finished: call it when the consumer goes away.

    A consumer that falls behind gets the outputs waiting for it merged into one (deltas
    concatenated; vLLM V1 does the same): under load a server writes one event for several
    steps instead of falling further behind."""

    def __init__(self, engine: AsyncLLMEngine, request_id: str, stream: _Stream) -> None:
        self.engine = engine
        self.request_id = request_id
        self._queue = stream.queue
        self._held: BaseException | None = None  # an error that came after outputs merged
        self.finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = self._held or await self._queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        while not item.finished and not self._queue.empty():
            later = self._queue.get_nowait()
            if isinstance(later, BaseException):
                self._held = later
                break
            item = merge_outputs(item, later)
        self.finished = item.finished
        return item

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self.engine.abort(self.request_id)


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_adds = 0
        self._listeners: list[Callable[[list[FinishedRecord]], None]] = []
        self.snapshot = EngineSnapshot()
        self.num_steps = 0
        self.failure: str | None = None  # set when the engine stopped on its own (a dead core process or rank)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="infer-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float | None = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        stop_workers = getattr(self.engine, "shutdown", None)  # tensor-parallel workers, if any
        if stop_workers is not None:
            stop_workers()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def is_ready(self) -> bool:
        """The model is loaded and the loop is stepping (not stopping)."""
        return self.is_running and not self._stopping.is_set()

    @property
    def num_unfinished(self) -> int:
        with self._lock:
            return len(self._streams)

    @property
    def num_waiting(self) -> int:
        """Requests handed in that are not running yet: still on their way to the engine
        thread, or waiting (or preempted) in the scheduler."""
        with self._lock:
            return self._pending_adds + self.snapshot.num_waiting

    def add_finished_listener(self, listener: Callable[[list[FinishedRecord]], None]) -> None:
        """Call ``listener`` on the engine thread with the timings of requests that finished
        (``EngineMetrics.pop_finished()``), after each loop iteration that finished some."""
        self._listeners.append(listener)

    # -- requests ----------------------------------------------------------------------------

    def add_request(self, request: Request, prompt_text: str | None = None) -> RequestStream:
        """Hand ``request`` (from ``engine.make_request``) to the engine; its outputs arrive
        on the returned stream. Must be called from a running event loop."""
        if self._stopping.is_set():
            raise RuntimeError("the engine is shutting down; it takes no new requests.")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if request.request_id in self._streams:
                raise RequestError(f"request id '{request.request_id}' is already in use.")
            self._streams[request.request_id] = stream
            self._pending_adds += 1
        self._post(("add", request, prompt_text))
        return RequestStream(self, request.request_id, stream)

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
        stream = self.add_request(request, prompt if isinstance(prompt, str) else None)
        try:
            async for output in stream:
                yield output
        finally:
            stream.close()

    def abort(self, request_id: str) -> None:
        """Abort a request; its blocks are back in the pool before the next step."""
        self._post(("abort", request_id))

    async def inspect(self, fn: Callable[[LLMEngine], Any], timeout: float = 10.0) -> Any:
        """``fn(engine)`` run on the engine thread between two steps (so it sees a consistent
        state), or here when the loop is not running. For debugging and soak checks."""
        if not self.is_running:
            return fn(self.engine)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._post(("inspect", fn, future))
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    @property
    def num_pending_adds(self) -> int:
        with self._lock:
            return self._pending_adds

    def fail_unfinished(self, error: str) -> None:
        """End every request handed in so far with ``error`` (finish reason ``error``)."""
        self._post(("fail", error))

    def _post(self, command: tuple) -> None:
        """Hand a command to the engine loop (applied between two steps)."""
        self._commands.put(command)
        self._wake.set()

    # -- the engine thread --------------------------------------------------------------------

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        self._deliver_all([(request_id, item)])

    def _deliver_all(self, items: Sequence[tuple[str, RequestOutput | BaseException]]) -> None:
        """Hand each item to its request's stream (a finished output or an error ends the
        stream), with one wake-up per event loop, not one per request (at 32 streams, 32
        self-pipe writes and loop wake-ups per step)."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput | BaseException]]] = {}
        with self._lock:
            for request_id, item in items:
                finished = isinstance(item, BaseException) or item.finished
                stream = self._streams.pop(request_id, None) if finished else self._streams.get(request_id)
                if stream is not None:
                    batches.setdefault(stream.loop, []).append((stream.queue, item))
        for loop, queued in batches.items():
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody listens
                    loop.call_soon_threadsafe(_put_all, queued)

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                request: Request = command[1]
                added = False
                try:
                    self.engine.add_request(request, command[2])
                    added = True
                except Exception as exc:
                    self._deliver(request.request_id, exc)
                finally:
                    with self._lock:  # counted as waiting from here on, not only from the next snapshot
                        self._pending_adds -= 1
                        if added:
                            self.snapshot = replace(self.snapshot, num_waiting=self.snapshot.num_waiting + 1)
            elif command[0] == "inspect":
                fn, future = command[1], command[2]
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(self.engine))
                    except Exception as exc:
                        future.set_exception(exc)
            elif command[0] == "abort":
                output = self.engine.abort_request(command[1])
                if output is not None:
                    self._deliver(command[1], output)
            else:
                ids = self.engine.unfinished_request_ids()
                self._deliver_all([(o.request_id, o) for o in self.engine.fail_requests(ids, command[1])])

    def _snapshot(self) -> EngineSnapshot:
        """The engine's gauges now (engine thread)."""
        scheduler = self.engine.scheduler
        return EngineSnapshot(len(scheduler.running), len(scheduler.waiting), scheduler.cache.usage,
                              getattr(self.engine, "failure", None))

    def _publish(self) -> None:
        snapshot = self._snapshot()
        with self._lock:
            self.snapshot = snapshot
            if snapshot.failure is not None and self.failure is None:
                self.failure = snapshot.failure  # /health and /ready answer 503 with it
        self._notify_finished()

    def _notify_finished(self) -> None:
        if self._listeners:
            finished = self.engine.metrics.pop_finished()
            if finished:
                for listener in self._listeners:
                    try:
                        listener(finished)
                    except Exception:
                        log.exception("finished-request listener failed")

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._iterate()
            except Exception as exc:  # a bug outside the model's step: end what is in flight, go on
                log.exception("engine loop failed")
                self._fail_in_flight(f"{type(exc).__name__}: {exc}")
        try:
            self._apply_commands()
        finally:
            self._fail_in_flight("the engine shut down before the request finished")
            for request_id in list(self._streams):
                self._deliver(request_id, RuntimeError("the engine shut down before the request finished"))
            self._publish()

    def _iterate(self) -> None:
        self._apply_commands()
        if not self.engine.has_unfinished_requests():
            self._publish()
            self._wake.wait(IDLE_WAIT_S)
            self._wake.clear()
            return
        try:
            outputs = self.engine.step()
        except Exception as exc:  # a bug outside the model: fail what is in flight, go on
            log.exception("engine step failed")
            outputs = self.engine.fail_requests(self.engine.unfinished_request_ids(), f"{type(exc).__name__}: {exc}")
        self.num_steps += 1
        self._notify_finished()  # before the outputs: a client that saw its last token finds it in /metrics
        self._deliver_all([(output.request_id, output) for output in outputs])
        self._publish()

    def _fail_in_flight(self, error: str) -> None:
        """End every request the scheduler holds with ``error``, each exactly once; if even that
        fails, their streams get the error as an exception."""
        ids = self.engine.unfinished_request_ids()
        try:
            outputs = self.engine.fail_requests(ids, error)
        except Exception:
            log.exception("failing the requests in flight failed")
            self._deliver_all([(request_id, RuntimeError(error)) for request_id in ids])
            return
        self._deliver_all([(output.request_id, output) for output in outputs])
