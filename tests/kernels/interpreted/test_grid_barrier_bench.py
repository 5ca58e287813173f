"""``benchmarks/grid_barrier.py`` (the persistent layer's barrier timed alone, on a GPU) calls the
layer's own barrier helpers (``decode_layer.sync``): its kernel runs under the interpreter with
one program (whose barrier opens at once), so a change to those helpers' signatures fails here,
not in a device call. The counter after ``K`` exchanges holds ``K`` arrivals; with the vector,
each exchange adds the vector's words to the sink."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = str(Path(__file__).resolve().parents[3] / "benchmarks")


@pytest.fixture(scope="module")
def grid_barrier():
    """``benchmarks/grid_barrier.py``, imported with ``benchmarks/`` on ``sys.path`` for its own
    ``kernels`` module, which is then taken out of ``sys.modules`` again (it would shadow the
    ``kernels`` package transformers imports)."""
    before = sys.modules.pop("kernels", None)  # (another "kernels" imported first would be found instead)
    sys.path.insert(0, BENCHMARKS)
    try:
        module = importlib.import_module("grid_barrier")
    finally:
        while BENCHMARKS in sys.path:  # (grid_barrier puts it there too)
            sys.path.remove(BENCHMARKS)
        if before is None:
            sys.modules.pop("kernels", None)
        else:
            sys.modules["kernels"] = before
    return module


@pytest.mark.parametrize("mode", ["counter", "counter+vector"])
def test_exchanges_with_one_program(grid_barrier, mode):
    k, words = 3, 16
    counters = torch.zeros(8, dtype=torch.int32)
    sink = torch.empty(words, dtype=torch.int64)
    error = torch.zeros(1, dtype=torch.int32)
    grid_barrier._bench_kernel[(1,)](counters, torch.zeros(1, dtype=torch.int32), torch.zeros(words, dtype=torch.int64),
                                     sink, error, 0, 1, K=k, MODE=grid_barrier.MODES[mode], POLL_SLEEP=0, N=words,
                                     PER=words, PP2=1)
    assert counters[0].item() == k and error.item() == 0
    expected = sum(torch.arange(words, dtype=torch.int64) + i for i in range(k)) if mode == "counter+vector" else 0
    assert torch.equal(sink, torch.zeros(words, dtype=torch.int64) + expected)
