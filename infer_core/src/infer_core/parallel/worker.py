"""A worker process: one rank (1..N-1) of a tensor-parallel engine.

It joins the group, waits for rank 0's :class:`RankSpec` (sent once rank 0 has loaded its own
shard and sized the KV cache), loads its shard of the same checkpoint, allocates the same
number of KV blocks for its heads, builds the same :class:`~infer_core.engine.runner.ModelRunner`
and then mirrors rank 0's runner call by call: ``launch`` (the step's ``SchedulerOutput``,
plain data), ``finish``, ``capture``. Every rank runs the same step, with the collectives of
the parallel layers inside; every rank samples the same ids from the same gathered logits
(same seeds), so its runner's state stays rank 0's; only rank 0's outputs are used.

The protocol is a ``multiprocessing`` pipe of pickled tuples: rank 0 → worker ``("setup",
spec)``, ``("launch", scheduler_output)``, ``("finish",)``, ``("capture",)``,
``("shutdown",)``; worker → rank 0 ``("ready",)`` after setup and ``("captured",)`` after
capture, or ``("error", text)`` once, after which the worker exits. A worker ignores SIGINT
(rank 0 decides when to stop) and exits when the pipe closes, so it never outlives rank 0.
"""

from __future__ import annotations

import collections
import contextlib
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from infer_core.config import EngineConfig
from infer_core.parallel.group import connect


@dataclass(frozen=True)
class RankSpec:
    """What every rank builds, as rank 0 resolved it (the config stays the single source)."""

    model_dir: str
    dtype: torch.dtype
    kv_dtype: torch.dtype
    max_model_len: int
    attention: str  # the attention backend plugin's name
    attention_options: Any
    num_blocks: int
    block_size: int
    small_m_prologues: str | None  # the small-M GEMM's prologues when it is on, else None
    runner: dict[str, Any]  # ModelRunner's keyword arguments but model and device
    small_m_gated_epilogue: bool = False  # with the small-M GEMM: the activation in gate/up's epilogue


def rank_device(device: str, rank: int) -> torch.device:
    base = torch.device(device)
    if base.type != "cuda":
        return base
    return torch.device("cuda", (base.index or 0) + rank)


def run_worker(config: EngineConfig, rank: int, size: int, port: int, rank0_device: str, conn: Connection) -> None:
    """The worker process's main (``spawn``ed by :class:`~infer_core.parallel.executor.WorkerGroup`
    with rank 0's resolved device; rank ``r`` takes ``cuda:(index + r)`` on CUDA)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        device = rank_device(rank0_device, rank)
        tp = connect(rank, size, port, device, config.parallel.timeout_s)
        kind, spec = conn.recv()
        assert kind == "setup", kind
        runner = _build(config, spec, tp, device)
        conn.send(("ready",))
        _serve(conn, runner)
    except (EOFError, OSError, KeyboardInterrupt):
        return  # rank 0 went away
    except BaseException as exc:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("error", f"tensor-parallel rank {rank} failed: {type(exc).__name__}: {exc}"))


def _build(config: EngineConfig, spec: RankSpec, tp, device: torch.device) -> Any:
    from infer_core.attention.kv_tensors import allocate_kv_caches
    from infer_core.engine.runner import ModelRunner
    from infer_core.layers.linear import enable_small_m_gemm
    from infer_core.loader.model import load_model
    from infer_core.models.base import ModelContext
    from infer_core.plugins import make_plugin_manager

    pm = make_plugin_manager(blocked=config.plugins.disable)
    backend = pm.attention_backends.get(spec.attention).load()(spec.attention_options)
    torch.manual_seed(config.model.seed)  # the same random draws as rank 0's
    model = load_model(Path(spec.model_dir), pm, ModelContext(backend, spec.max_model_len, tp),
                       dtype=spec.dtype, device=device)
    if spec.small_m_prologues is not None:
        enable_small_m_gemm(model, spec.small_m_prologues, spec.small_m_gated_epilogue)
    allocate_kv_caches(model, spec.num_blocks, spec.block_size, spec.kv_dtype, device)
    return ModelRunner(model, device=device, **spec.runner)


def _serve(conn: Connection, runner: Any) -> None:
    launched: collections.deque = collections.deque()
    while True:
        command = conn.recv()
        kind = command[0]
        if kind == "launch":
            launched.append(runner.launch(command[1]))
        elif kind == "finish":
            runner.finish(launched.popleft())
        elif kind == "capture":
            runner.capture_cuda_graphs()
            conn.send(("captured",))
        elif kind == "shutdown":
            return
        else:
            raise RuntimeError(f"unknown command {kind!r}")
