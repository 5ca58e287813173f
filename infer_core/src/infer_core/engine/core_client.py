"""The engine core in its own process (``server.engine_process``; vLLM V1's engine-core
client): the server process keeps HTTP, validation, tokenization and the request streams; a
child process runs the :class:`~infer_core.engine.llm_engine.LLMEngine` loop. The event loop
then has the interpreter to itself, instead of sharing the GIL with the engine's Python
(scheduling, input preparation, detokenization) between and during steps.

Protocol (``multiprocessing`` pipe, pickled tuples; one message per loop iteration back):

- server → core: ``("add", request, prompt_text)``, ``("abort", request_id)``,
  ``("fail", error)``, ``("inspect", fn, token)``, ``("shutdown",)``;
- core → server: ``("ready", CoreInfo)`` or ``("error", exception)`` once at start-up, then
  ``("step", outputs, snapshot, stats, adds_applied, num_steps, finished)`` after each loop
  iteration (outputs are ``(request_id, OutputDelta | exception)`` pairs: what the step added,
  which the server turns back into ``RequestOutput`` s, :mod:`~infer_core.engine.output_wire`),
  and ``("inspected", token, ok, value)``.

The child is started with ``spawn`` (CUDA cannot be forked). It ignores SIGINT (the server
decides when it stops) and exits when the pipe closes, so it never outlives the server. A
core that dies fails every open stream with a sentence saying so, and the server's
``/health`` and ``/ready`` report it (503).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from infer_core.config import EngineConfig
from infer_core.engine.async_engine import AsyncLLMEngine, EngineSnapshot
from infer_core.engine.metrics import EngineStats
from infer_core.engine.output_wire import DeltaEncoder, OutputAssembler, OutputDelta
from infer_core.engine.processor import InputProcessor
from infer_core.errors import InferError
from infer_core.request import RequestOutput

log = logging.getLogger(__name__)
START_TIMEOUT_S = 1800.0  # loading and compiling a large model can take minutes
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CoreInfo:
    """What the server needs from the loaded engine (sent once, at start-up)."""

    model_dir: str
    vocab_size: int
    eos_token_ids: frozenset[int]
    layout: Any  # RuntimeLayout
    model_class: type
    capacity: str  # the KV cache's capacity line, for the start-up log
    pid: int


class CoreFrontend:
    """The engine as the server process sees it (``EngineCoreClient.engine``): the tokenizer,
    request validation (:meth:`make_request`), the runtime layout, the model class and the
    engine's counters (``metrics.stats``, refreshed after every core step)."""

    def __init__(self, config: EngineConfig, info: CoreInfo) -> None:
        from infer_core.loader.tokenizer import Tokenizer

        self.config = config
        self.layout = info.layout
        self.model_class = info.model_class
        self.tokenizer = Tokenizer.from_dir(Path(info.model_dir))
        self.vocab_size = info.vocab_size
        self.eos_token_ids = info.eos_token_ids
        self.processor = InputProcessor(self.tokenizer, info.vocab_size, info.layout.max_model_len,
                                        info.eos_token_ids)
        self.metrics = _Counters()
        self.make_request = self.processor.make_request


@dataclass
class _Counters:
    """``metrics.stats`` as ``LLMEngine`` has it: the core's counters after its latest step."""

    stats: EngineStats = field(default_factory=EngineStats)


class EngineCoreClient(AsyncLLMEngine):
    """:class:`AsyncLLMEngine`'s interface (streams, abort, inspect, snapshot, finished
    listeners) over an engine core in a child process. :meth:`spawn` starts it and returns
    once the model is loaded (or raises the core's start-up error)."""

    def __init__(self, config: EngineConfig, process: multiprocessing.Process, conn: Connection,
                 info: CoreInfo) -> None:
        super().__init__(CoreFrontend(config, info))  # type: ignore[arg-type]
        self.info = info
        self._process = process
        self._conn = conn
        self._send_lock = threading.Lock()
        self._adds_sent = 0
        self._inspections: dict[int, concurrent.futures.Future] = {}
        self._tokens = itertools.count()
        self._assembler = OutputAssembler()  # each open request's prompt and output so far
        self.failure: str | None = None  # why the core stopped, when it stopped on its own
        self._reader = threading.Thread(target=self._read, name="infer-core-reader", daemon=True)
        self._reader.start()

    @classmethod
    def spawn(cls, config: EngineConfig, timeout: float = START_TIMEOUT_S) -> EngineCoreClient:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=run_engine_core, args=(config, child, logging.getLogger().level),
                              name="infer-engine-core", daemon=True)
        process.start()
        child.close()
        try:
            if not parent.poll(timeout):
                raise InferError(f"the engine process did not start within {timeout:.0f} s.")
            kind, payload = parent.recv()
        except (EOFError, OSError):
            process.join(5)
            raise InferError(f"the engine process exited during start-up (exit code {process.exitcode}); "
                             "its log above says why.") from None
        except BaseException:
            process.kill()
            raise
        if kind == "error":
            process.join(STOP_TIMEOUT_S)
            raise payload
        return cls(config, process, parent, payload)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """The core loop runs from spawn on; nothing to start."""

    def shutdown(self, timeout: float | None = STOP_TIMEOUT_S) -> None:
        self._stopping.set()
        self._send(("shutdown",))
        self._process.join(timeout)
        if self._process.is_alive():
            log.warning("the engine process did not stop within %s s; terminating it", timeout)
            self._process.terminate()
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._reader.join(timeout)
        self._conn.close()

    @property
    def is_running(self) -> bool:
        return self.failure is None and self._process.is_alive() and self._reader.is_alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    # -- requests ----------------------------------------------------------------------------

    async def inspect(self, fn: Callable[[Any], Any], timeout: float = 10.0) -> Any:
        """``fn(engine)`` run in the core process between two steps (``fn`` must be picklable:
        a module-level function); its result comes back pickled."""
        if not self.is_running:
            raise RuntimeError(f"the engine process is not running{': ' + self.failure if self.failure else ''}.")
        future: concurrent.futures.Future = concurrent.futures.Future()
        token = next(self._tokens)
        with self._lock:
            self._inspections[token] = future
        self._send(("inspect", fn, token))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        finally:
            with self._lock:
                self._inspections.pop(token, None)

    def _post(self, command: tuple) -> None:
        if command[0] == "add":
            self._assembler.start(command[1], command[2])
            with self._lock:
                self._adds_sent += 1
        if not self._send(command) and command[0] == "add":
            self._deliver(command[1].request_id, RuntimeError(self._gone()))

    def _send(self, message: tuple) -> bool:
        try:
            with self._send_lock:
                self._conn.send(message)
            return True
        except (OSError, ValueError):  # the core is gone (its exit is reported by the reader)
            return False

    def _gone(self) -> str:
        return self.failure or "the engine shut down before the request finished"

    # -- the reader thread ---------------------------------------------------------------------

    def _read(self) -> None:
        try:
            while True:
                message = self._conn.recv()
                kind = message[0]
                if kind == "step":
                    self._on_step(*message[1:])
                elif kind == "inspected":
                    _, token, ok, value = message
                    with self._lock:
                        future = self._inspections.get(token)
                    if future is not None and not future.done():
                        if ok:
                            future.set_result(value)
                        else:
                            future.set_exception(value)
        except (EOFError, OSError):
            pass
        except Exception:  # a message that cannot be read: stop as if the core died
            log.exception("reading from the engine process failed")
        self._on_core_exit()

    def _on_step(self, outputs: Sequence[tuple[str, RequestOutput | BaseException]], snapshot: EngineSnapshot,
                 stats: EngineStats, adds_applied: int, num_steps: int, finished: list) -> None:
        with self._lock:
            self.snapshot = snapshot
            self._pending_adds = max(self._adds_sent - adds_applied, 0)
            if snapshot.failure is not None and self.failure is None:
                self.failure = snapshot.failure  # a dead tensor-parallel rank of the core
        self.engine.metrics.stats = stats
        self.num_steps = num_steps
        if finished:  # before the outputs: a client that saw its last token finds it in /metrics
            for listener in self._listeners:
                try:
                    listener(finished)
                except Exception:
                    log.exception("finished-request listener failed")
        if outputs:
            self._deliver_all(outputs)

    def _deliver_all(self, items: Sequence[tuple[str, OutputDelta | RequestOutput | BaseException]]) -> None:
        """The core's deltas as full outputs (an error forgets its request's partial output)."""
        outputs: list[tuple[str, RequestOutput | BaseException]] = []
        for request_id, item in items:
            if isinstance(item, OutputDelta):
                output = self._assembler.assemble(item)
                if output is not None:
                    outputs.append((request_id, output))
            else:
                if isinstance(item, BaseException):
                    self._assembler.discard(request_id)
                outputs.append((request_id, item))
        super()._deliver_all(outputs)

    def _on_core_exit(self) -> None:
        self._process.join(STOP_TIMEOUT_S if self._stopping.is_set() else 1.0)
        if not self._stopping.is_set():
            self.failure = (f"the engine process exited unexpectedly (exit code {self._process.exitcode}); "
                            "restart the server")
            log.error(self.failure)
        with self._lock:
            open_ids = list(self._streams)
            inspections = list(self._inspections.values())
        self._deliver_all([(request_id, RuntimeError(self._gone())) for request_id in open_ids])
        for future in inspections:
            if not future.done():
                future.set_exception(RuntimeError(self._gone()))


class _CoreLoop(AsyncLLMEngine):
    """The loop of the core process: :class:`AsyncLLMEngine`'s engine loop, fed by the pipe,
    its outputs and gauges sent back once per iteration."""

    def __init__(self, engine: Any, conn: Connection) -> None:
        super().__init__(engine)
        self._conn = conn
        self._outbox: list[tuple[str, OutputDelta | BaseException]] = []
        self._encoder = DeltaEncoder()
        self._adds_received = 0

    def receive(self) -> None:
        """The pipe's reader (a thread of the core process): commands into the loop's queue;
        a closed pipe (the server went away) stops the loop."""
        try:
            while True:
                command = self._conn.recv()
                if command[0] == "shutdown":
                    break
                if command[0] == "add":
                    with self._lock:
                        self._adds_received += 1
                        self._pending_adds += 1
                elif command[0] == "inspect":
                    command = ("inspect", command[1], self._inspect_future(command[2]))
                self._post(command)
        except (EOFError, OSError):
            pass
        self._stopping.set()
        self._wake.set()

    def _inspect_future(self, token: int) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()

        def reply(done: concurrent.futures.Future) -> None:
            exc = done.exception()
            self._send(("inspected", token, exc is None, done.result() if exc is None else _picklable(exc)))

        future.add_done_callback(reply)
        return future

    def _deliver_all(self, items: Sequence[tuple[str, RequestOutput | BaseException]]) -> None:
        self._outbox.extend((rid, _picklable(item) if isinstance(item, BaseException) else self._encoder.encode(item))
                            for rid, item in items)

    def _notify_finished(self) -> None:
        """The finished records travel with the step's outputs (:meth:`_publish`); the server
        calls its listeners before it delivers the outputs."""

    def _publish(self) -> None:
        snapshot = self._snapshot()
        with self._lock:
            applied = self._adds_received - self._pending_adds
        outbox, self._outbox = self._outbox, []
        self._send(("step", outbox, snapshot, self.engine.metrics.stats, applied, self.num_steps,
                    self.engine.metrics.pop_finished()))

    def _send(self, message: tuple) -> None:
        with contextlib.suppress(OSError, ValueError), self._lock:  # the server is gone: the loop stops
            self._conn.send(message)


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def run_engine_core(config: EngineConfig, conn: Connection, log_level: int = logging.INFO) -> None:
    """The core process: load the engine, report ready (or the start-up error), run the loop
    until the server says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server decides
    logging.basicConfig(level=log_level, format="%(levelname)s:     %(message)s")
    import os

    from infer_core.engine.llm_engine import LLMEngine
    from infer_core.server.startup import capacity_line

    try:
        engine = LLMEngine(config)
        info = CoreInfo(str(Path(config.model.path or "").expanduser()), engine.vocab_size,
                        engine.eos_token_ids, engine.layout, engine.model_class,
                        capacity_line(engine), os.getpid())
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", _picklable(exc) if isinstance(exc, InferError) else
                       InferError(f"the engine failed to start: {type(exc).__name__}: {exc}")))
        if not isinstance(exc, InferError):
            log.exception("engine start-up failed")
        return
    loop = _CoreLoop(engine, conn)
    conn.send(("ready", info))
    reader = threading.Thread(target=loop.receive, name="infer-core-pipe", daemon=True)
    reader.start()
    try:
        loop._run()
    finally:
        engine.shutdown()  # tensor-parallel workers, if any
        conn.close()
