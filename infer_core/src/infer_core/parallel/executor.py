"""Rank 0's side of a tensor-parallel engine: the worker processes (:class:`WorkerGroup`)
and the runner that drives them in step with its own (:class:`TPRunner`).

The engine process is rank 0: it runs the scheduler once, and its runner sends each call
(``launch`` with the step's ``SchedulerOutput``, ``finish``, ``capture``) down every worker's
pipe before making it itself, so all ranks run the same step at the same time and meet in
the parallel layers' collectives. A worker that fails reports its error and exits; rank 0
then ends with that error: the collective it waits in fails when the peer's connection
closes (or after ``parallel.timeout_s``), and every later step and every new request fail
with the worker's sentence, never a hang. ``shutdown`` (also at interpreter exit) stops the
workers and leaves no process behind.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from infer_core.config import EngineConfig
from infer_core.errors import ConfigError, InferError
from infer_core.parallel.group import TPGroup, joined_key, process_group
from infer_core.parallel.worker import RankSpec, run_worker

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0


class WorkerGroup:
    """Ranks 1..N-1, each in a ``spawn``ed process; rank 0 is the calling process."""

    def __init__(self, config: EngineConfig, device: torch.device) -> None:
        size = config.parallel.tensor_parallel_size
        if device.type == "cuda" and torch.cuda.device_count() - (device.index or 0) < size:
            raise ConfigError(
                f"parallel.tensor_parallel_size = {size} needs {size} GPUs from {device}, but "
                f"{torch.cuda.device_count()} are visible; lower it or expose more GPUs."
            )
        self.size = size
        self.failure: str | None = None
        self._lock = threading.Lock()
        timeout = timedelta(seconds=config.parallel.timeout_s)
        store = dist.TCPStore("127.0.0.1", 0, size, is_master=True, timeout=timeout, wait_for_workers=False)
        ctx = multiprocessing.get_context("spawn")
        self._processes: list[multiprocessing.Process] = []
        self._conns: list[Any] = []
        for rank in range(1, size):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=run_worker, args=(config, rank, size, store.port, str(device), child),
                                  name=f"infer-tp-rank-{rank}", daemon=True)
            process.start()
            child.close()
            self._processes.append(process)
            self._conns.append(parent)
        self._finalizer = weakref.finalize(self, _stop, self._processes, self._conns)
        try:
            self._wait_until_joined(store, config.parallel.timeout_s)
            self.tp = TPGroup(0, size, process_group(store, 0, size, device, timeout))
        except BaseException:
            self.shutdown()
            raise
        self._store = store

    def _wait_until_joined(self, store: Any, timeout_s: float) -> None:
        """Until every worker has reached the store, watching that none has died on the way
        (an import error, a bad device) instead of waiting out the timeout."""
        keys = [joined_key(rank) for rank in range(1, self.size)]
        deadline = time.monotonic() + timeout_s
        while not store.check(keys):
            if any(not p.is_alive() for p in self._processes):
                raise InferError(self._first_error() or self._dead())
            if time.monotonic() > deadline:
                raise InferError(f"the tensor-parallel workers did not start within parallel.timeout_s "
                                 f"({timeout_s:g} s); their log above may say why.")
            time.sleep(0.02)

    def setup(self, spec: RankSpec) -> None:
        """Hand every worker the spec and wait until each has built its rank (or failed)."""
        self.send(("setup", spec))
        self.wait_for("ready")

    def send(self, command: tuple) -> None:
        """A command to every worker; raises the workers' failure if there is one."""
        self.check()
        for conn in self._conns:
            try:
                conn.send(command)
            except (OSError, ValueError):
                self.check()
                raise InferError(self._dead()) from None

    def check(self) -> None:
        """Raise the workers' failure: an error one reported, or a worker that exited."""
        if self.failure is None:
            error = self._first_error()
            if error is None and any(not p.is_alive() for p in self._processes):
                error = self._dead()
            if error is not None:
                with self._lock:
                    self.failure = error
                log.error("%s", error)
        if self.failure is not None:
            raise InferError(self.failure)

    def _first_error(self) -> str | None:
        for conn in self._conns:
            try:
                while conn.poll():
                    message = conn.recv()
                    if message[0] == "error":
                        return message[1]
            except (EOFError, OSError):
                continue
        return None

    def _dead(self) -> str:
        codes = [f"rank {i + 1} (exit code {p.exitcode})" for i, p in enumerate(self._processes) if not p.is_alive()]
        return f"tensor-parallel worker {', '.join(codes) or 'pipe'} stopped unexpectedly; restart the engine"

    def wait_for(self, kind: str) -> None:
        """Each worker's next message, which must be ``kind`` (its error is raised instead)."""
        for rank, conn in enumerate(self._conns, start=1):
            try:
                message = conn.recv()
            except (EOFError, OSError):
                self.check()
                raise InferError(self._dead()) from None
            if message[0] == "error":
                with self._lock:
                    self.failure = message[1]
                raise InferError(message[1])
            if message[0] != kind:
                raise InferError(f"tensor-parallel rank {rank} answered {message[0]!r}, expected {kind!r}")

    def shutdown(self) -> None:
        self._finalizer()


def _stop(processes: list, conns: list) -> None:
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("shutdown",))
    for process in processes:
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()
    for conn in conns:
        conn.close()


class TPRunner:
    """Rank 0's :class:`~infer_core.engine.runner.ModelRunner` (``local``), driving the
    workers' runners call by call; everything else reads through to ``local``."""

    def __init__(self, local: Any, workers: WorkerGroup) -> None:
        self.local = local
        self.workers = workers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def launch(self, out: Any, while_running: Callable[[], None] | None = None) -> Any:
        self.workers.send(("launch", out))
        try:
            return self.local.launch(out, while_running)
        except Exception:
            self.workers.check()  # a worker's own error explains the failed collective
            raise

    def finish(self, launched: Any) -> Any:
        self.workers.send(("finish",))
        return self.local.finish(launched)

    def execute_model(self, out: Any, while_running: Callable[[], None] | None = None) -> Any:
        return self.finish(self.launch(out, while_running))

    def capture_cuda_graphs(self) -> float:
        self.workers.send(("capture",))
        seconds = self.local.capture_cuda_graphs()
        self.workers.wait_for("captured")
        return seconds
