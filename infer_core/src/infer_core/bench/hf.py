"""Hugging Face transformers side by side: the same workloads through transformers, in the same
process as infer's runs so that the ratio holds on a noisy machine.

- W1 (one request): ``generate`` with a static KV cache (``cache_implementation="static"``,
  which transformers compiles on CUDA), greedy; a streamer stamps every token, so TTFT, ITL and
  TPOT mean what they mean for infer. One full warm-up call (compilation) is not counted.
- W2, W4 (many requests): transformers' continuous batching (``generate_batch``'s manager,
  ``continuous_batching_context_manager``), one ``add_request`` per request with its own
  ``max_new_tokens`` and EOS disabled, token timestamps recorded by transformers. Two short
  warm-up requests are not counted. Transformers without continuous batching (before 4.56) is
  reported as skipped, with the reason.
- Repeats (``--repeats``) reuse the loaded model: ``generate``'s warm-up call runs before the
  first run only; each continuous-batching run opens its own manager and warms it up.

EOS is disabled everywhere (``ignore_eos``), so both sides produce the same token counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from infer_core.bench.metrics import RequestRecord
from infer_core.bench.workloads import Workload

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class HFUnavailable(Exception):
    """This transformers cannot run the workload the way the side by side needs."""


@dataclass
class HFRun:
    workload: Workload
    records: list[RequestRecord]
    duration_s: float
    method: str
    notes: list[str] = field(default_factory=list)


def load_model(model_dir: str, device: str, dtype: str):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, DTYPES[dtype]), attn_implementation="sdpa",
    ).to(device).eval()
    model.generation_config.eos_token_id = None  # ignore_eos
    model.generation_config.pad_token_id = 0
    return model


class _Stamps:
    """A ``generate`` streamer that stamps each new token (the first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_static(model, workload: Workload, *, warmup: bool = True) -> HFRun:
    """Each request alone through ``generate`` with a static cache (W1); ``warmup=False`` for a
    repeat on a model that has already run (and compiled) it."""
    import torch

    def one(req, streamer=None):
        ids = torch.tensor([req.prompt_token_ids], device=model.device)
        with torch.inference_mode():
            return model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=req.max_tokens,
                min_new_tokens=req.max_tokens, do_sample=False, cache_implementation="static",
                streamer=streamer,
            )

    if warmup:
        one(workload.requests[0])  # warm-up (and compilation)
    records = []
    start = time.perf_counter()
    for req in workload.requests:
        stamps = _Stamps()
        t0 = time.perf_counter()
        out = one(req, stamps)
        records.append(RequestRecord(
            prompt_tokens=req.prompt_len, start=t0, end=time.perf_counter(),
            token_times=stamps.times, output_tokens=out.shape[1] - req.prompt_len,
            expected_output_tokens=req.max_tokens, tag=req.tag,
        ))
    return HFRun(workload, records, time.perf_counter() - start, "generate, static cache")


def run_continuous(model, workload: Workload) -> HFRun:
    """All requests at once through transformers' continuous batching (W2, W4)."""
    if not hasattr(model, "continuous_batching_context_manager"):
        import transformers

        raise HFUnavailable(f"transformers {transformers.__version__} has no continuous batching "
                            f"(generate_batch arrived in 4.56)")
    from transformers import GenerationConfig

    reqs = workload.requests
    temperature = reqs[0].temperature if reqs else 0.0
    config = GenerationConfig(
        max_new_tokens=max(r.max_tokens for r in reqs), do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None, eos_token_id=-1, pad_token_id=0,
    )
    with model.continuous_batching_context_manager(generation_config=config, block=True, timeout=30,
                                                   **_cb_settings(model, reqs)) as manager:
        warm = [manager.add_request(r.prompt_token_ids, max_new_tokens=2, eos_token_id=-1) for r in reqs[:2]]
        _collect(manager, set(warm))
        start = time.perf_counter()
        ids = [manager.add_request(r.prompt_token_ids, max_new_tokens=r.max_tokens, eos_token_id=-1,
                                   record_timestamps=True) for r in reqs]
        results = _collect(manager, set(ids))
        duration = time.perf_counter() - start
    records = []
    for rid, req in zip(ids, reqs, strict=True):
        out = results.get(rid)
        if out is None or out.error:
            records.append(RequestRecord(prompt_tokens=req.prompt_len, start=start, end=start + duration,
                                         success=False, error=(out.error if out else "no result"), tag=req.tag))
            continue
        times = list(out.timestamps or [])
        records.append(RequestRecord(
            prompt_tokens=req.prompt_len, start=start, end=times[-1] if times else start + duration,
            token_times=times, output_tokens=len(out.generated_tokens),
            expected_output_tokens=req.max_tokens, tag=req.tag,
        ))
    return HFRun(workload, records, duration, "continuous batching (generate_batch's manager)")


def _cb_settings(model, reqs) -> dict[str, Any]:
    """On CUDA, transformers' own defaults (KV cache sized from free memory, CUDA graphs
    captured in a warm-up). On the CPU its defaults spend most of their time sizing and warming
    up, so the cache is sized for the workload and nothing is captured."""
    if model.device.type == "cuda":
        return {}
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:
        return {"warmup": False}
    tokens = sum(len(r.prompt_token_ids) + r.max_tokens for r in reqs)
    page = 256
    return {"warmup": False, "continuous_batching_config": ContinuousBatchingConfig(
        num_blocks=len(reqs) + tokens // page + 1, max_batch_tokens=2048, use_cuda_graph=False)}


def _collect(manager, wanted: set[str], timeout_s: float = 3600.0) -> dict[str, Any]:
    results: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while wanted - results.keys() and time.monotonic() < deadline:
        out = manager.get_result(timeout=1.0)
        if out is None:
            if not manager.is_running():
                break
            continue
        if out.request_id in wanted and out.is_finished():
            results[out.request_id] = out
    return results


def run_hf(model, workload: Workload, *, warmup: bool = True) -> HFRun:
    """W1-shaped (one request) through ``generate``; everything else through continuous batching
    (a fresh manager per run, so its two short warm-up requests run every time; ``warmup``
    applies to ``generate``'s compilation call)."""
    if len(workload.requests) == 1:
        return run_static(model, workload, warmup=warmup)
    return run_continuous(model, workload)
