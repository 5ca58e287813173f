"""The workloads through ``LLM.generate`` / ``LLM.chat`` in-process (no HTTP).

All of a workload's requests are submitted at once (offline throughput, as nano-vllm and
``vllm bench throughput`` measure it; W6's arrival offsets do not apply). Per-request timings
come from the engine: ``RequestOutput.metrics`` and the finished-request records of
``engine.metrics`` (first token, inter-token gaps, finish, queue time, preemptions), on the
engine's ``time.monotonic`` clock. One warm-up request (the first, at most 16 output tokens)
runs first and is not counted; the prefix cache is reset after it. Repeats of a workload on the
same engine (``--repeats``) skip the warm-up and reset the prefix cache before each run.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from infer_core.bench.metrics import RequestRecord
from infer_core.bench.workloads import BenchRequest, Workload
from infer_core.request import RequestOutput, SamplingParams

WARMUP_MAX_TOKENS = 16


@dataclass
class OfflineRun:
    records: list[RequestRecord]
    duration_s: float
    engine: dict[str, Any] = field(default_factory=dict)  # stats deltas over the run


def sampling_params(req: BenchRequest) -> SamplingParams:
    return SamplingParams(temperature=req.temperature, max_tokens=req.max_tokens, ignore_eos=True,
                          seed=None)


def _submit(llm, requests: list[BenchRequest]) -> list[RequestOutput]:
    params = [sampling_params(r) for r in requests]
    if requests and requests[0].is_chat:
        return llm.chat([r.messages for r in requests], params)
    return llm.generate([r.prompt_token_ids for r in requests], params)


def _stats(llm) -> dict[str, Any]:
    s = llm.engine.metrics.stats
    return {
        "num_preemptions": s.num_preemptions,
        "prefix_cache_queries": getattr(s, "prefix_cache_queries", 0),
        "prefix_cache_hits": getattr(s, "prefix_cache_hits", 0),
        "prompt_tokens": s.prompt_tokens,
        "generation_tokens": s.generation_tokens,
    }


def warm_up(llm, workload: Workload) -> None:
    if not workload.requests:
        return
    first = workload.requests[0]
    short = BenchRequest(**{**first.__dict__, "max_tokens": min(first.max_tokens, WARMUP_MAX_TOKENS)})
    _submit(llm, [short])
    llm.engine.reset_prefix_cache()
    llm.engine.metrics.pop_finished()


def records_from(outputs: list[RequestOutput], requests: list[BenchRequest],
                 finished: list[tuple[Any, list[float], str | None]]) -> list[RequestRecord]:
    """Join the outputs with the engine's finished-request timings (matched by arrival time)."""
    by_arrival: dict[float, list[tuple[Any, list[float]]]] = defaultdict(list)
    for metrics, gaps, _reason in finished:
        by_arrival[metrics.arrival_time].append((metrics, gaps))
    records = []
    for out, req in zip(outputs, requests, strict=True):
        arrival = out.metrics.arrival_time if out.metrics else None
        matches = by_arrival.get(arrival) if arrival is not None else None
        metrics, gaps = matches.pop(0) if matches else (out.metrics, [])
        token_times: list[float] = []
        if metrics is not None and metrics.first_token_time is not None:
            token_times = list(itertools.accumulate(gaps, initial=metrics.first_token_time))
        end = (metrics.finished_time or metrics.last_token_time) if metrics else None
        records.append(RequestRecord(
            prompt_tokens=len(out.prompt_token_ids),
            start=arrival if arrival is not None else 0.0,
            end=end if end is not None else (token_times[-1] if token_times else 0.0),
            token_times=token_times,
            output_tokens=len(out.outputs[0].token_ids) if out.outputs else 0,
            expected_output_tokens=req.max_tokens,
            success=out.error is None,
            error=out.error,
            queue_time=metrics.queue_time if metrics else None,
            num_preemptions=metrics.num_preemptions if metrics else 0,
            tag=req.tag,
        ))
    return records


def run_offline(llm, workload: Workload, *, warmup: bool = True, reset_prefix_cache: bool = False) -> OfflineRun:
    """Run ``workload`` on ``llm`` (an ``infer_core.LLM``) and time every request.
    ``reset_prefix_cache``: start from an empty prefix cache (a repeat of a run on the same
    engine; the warm-up resets it anyway)."""
    if warmup:
        warm_up(llm, workload)
    elif reset_prefix_cache:
        llm.engine.reset_prefix_cache()
    llm.engine.metrics.pop_finished()
    before = _stats(llm)
    start = time.monotonic()
    outputs = _submit(llm, workload.requests)
    duration = time.monotonic() - start
    after = _stats(llm)
    finished = llm.engine.metrics.pop_finished()
    deltas = {key: after[key] - before[key] for key in after}
    queries = deltas["prefix_cache_queries"]
    deltas["prefix_cache_hit_rate"] = deltas["prefix_cache_hits"] / queries if queries else 0.0
    return OfflineRun(records_from(outputs, workload.requests, finished), duration, deltas)
