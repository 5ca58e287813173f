"""Uniform decode steps replayed as CUDA graphs.

A step where every scheduled request adds exactly one token (``num_tokens == num_reqs``) of
``B`` requests is padded to the smallest captured size ``G >= B`` and replays the graph
captured for ``G``: the model's forward over the runner's persistent device buffers, with the
launch shapes fixed at capture. Replay costs one host call instead of the ~10 launches per
layer of an eager step, which at small batches is most of a decode step's time.

What a graph holds is the runner's choice (``ModelRunner.capture_cuda_graphs``): the gather
of the step's block-table rows, the forward, the logits of every row and their argmax, so a
greedy decode step costs the host one replay and the copy of the sampled ids.

Padding rows ``B..G-1`` read token 0 at position 0 with ``seq_len`` 0 and slot ``-1``: the KV
write skips them and attention sees no key (their output is zero and is never read). The
attention launch is captured for the longest sequence (``max_model_len``), so the split count
is right for any context the step can have; the kernels read the real lengths from the device.

Only attention backends that read nothing from the host lists of the metadata can be captured
(``AttentionBackend.supports_cuda_graphs``). ``model.enforce_eager`` turns graphs off.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

log = logging.getLogger(__name__)

MAX_CAPTURE_SIZE = 512
T = TypeVar("T")
R = TypeVar("R")


def default_capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, then every 8 up to ``min(max_num_seqs, 512)`` (vLLM's ladder), plus the top."""
    top = min(max_num_seqs, MAX_CAPTURE_SIZE)
    sizes = {s for s in (1, 2, 4) if s <= top} | set(range(8, top + 1, 8)) | {top}
    return sorted(sizes)


@dataclass
class CapturedStep(Generic[R]):
    graph: torch.cuda.CUDAGraph
    outputs: R  # the captured forward's outputs (tensors written by every replay)


class DecodeGraphs(Generic[R]):
    """The captured decode graphs of one runner, by padded batch size."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = sorted(set(sizes))
        self.captured: dict[int, CapturedStep[R]] = {}
        self.capture_seconds = 0.0

    def size_for(self, num_reqs: int) -> int | None:
        """The smallest capture size that holds ``num_reqs`` rows, or None when it is larger
        than every size."""
        i = bisect.bisect_left(self.sizes, num_reqs)
        return self.sizes[i] if i < len(self.sizes) else None

    def capture(self, prepare: Callable[[int], T], forward: Callable[[T], R]) -> None:
        """For every size, largest first, in one shared memory pool: ``prepare(G)`` writes ``G``
        padding rows into the input buffers (outside the graph), ``forward(inputs)`` runs once
        eagerly (kernels compile outside the capture), then is captured."""
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            inputs = prepare(size)
            forward(inputs)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs = forward(inputs)
            self.captured[size] = CapturedStep(graph, outputs)
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - start
        log.info("captured %d decode CUDA graphs (batch sizes %d..%d) in %.1f s",
                 len(self.sizes), self.sizes[0], self.sizes[-1], self.capture_seconds)

    def replay(self, size: int) -> R:
        step = self.captured[size]
        step.graph.replay()
        return step.outputs
