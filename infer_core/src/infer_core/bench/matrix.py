"""The configuration matrix and the policy sweep, offline (``LLM.generate``), one fresh engine
per configuration.

Matrix entries (each on the workloads that show its effect):

==============  ==========================================================  =================
name            settings over the base configuration                        workloads
==============  ==========================================================  =================
static          ``scheduler.policy = "static"`` (batch at a time)            W4
continuous      ``fcfs`` on the contiguous cache (the default engine)        W4
paged           ``cache.backend = "paged"``                                  W1, W4
in-order        paged, ``scheduler.async_scheduling = false``                W1, W4
chunked-on      paged, chunked prefill in chunks of 512 tokens               W6
chunked-off     paged, no chunked prefill (budget >= max_model_len)          W6
prefix-off      paged, no prefix reuse                                       W5 shared, control
prefix-on       ``cache.backend = "prefix"``                                 W5 shared, control
==============  ==========================================================  =================

The policy sweep runs W4 and W5-shared under every installed policy (with the ``prefix`` cache
when it is installed, so that W5 can hit). An entry whose plugin is not installed is skipped
with the reason recorded; so is an entry whose engine fails to start.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from infer_core.bench.offline import run_offline
from infer_core.bench.report import run_entry
from infer_core.bench.workloads import Workload
from infer_core.config import EngineConfig, config_to_dict, deep_merge, load_config
from infer_core.errors import InferError
from infer_core.plugins import FIRST_PARTY_NAMES, make_plugin_manager

CHUNK = 512


@dataclass(frozen=True)
class MatrixEntry:
    name: str
    settings: dict[str, Any]
    workloads: tuple[str, ...]
    source: str = "matrix"


def _chunked_off(base: EngineConfig) -> dict[str, Any]:
    budget = max(base.scheduler.max_num_batched_tokens, base.model.max_model_len or 0)
    return {"cache": {"backend": "paged"},
            "scheduler": {"chunked_prefill": False, "prefill_chunk_size": None,
                          "max_num_batched_tokens": budget}}


def matrix_entries(base: EngineConfig) -> list[MatrixEntry]:
    paged = {"cache": {"backend": "paged"}}
    return [
        MatrixEntry("static", {"scheduler": {"policy": "static"}}, ("W4",)),
        MatrixEntry("continuous", {"cache": {"backend": "contiguous"}, "scheduler": {"policy": "fcfs"}}, ("W4",)),
        MatrixEntry("paged", paged, ("W1", "W4")),
        MatrixEntry("in-order", deep_merge(paged, {"scheduler": {"async_scheduling": False}}), ("W1", "W4")),
        MatrixEntry("chunked-on", deep_merge(paged, {"scheduler": {
            "chunked_prefill": True, "prefill_chunk_size": min(CHUNK, base.scheduler.max_num_batched_tokens)}}),
            ("W6",)),
        MatrixEntry("chunked-off", _chunked_off(base), ("W6",)),
        MatrixEntry("prefix-off", paged, ("W5-shared", "W5-control")),
        MatrixEntry("prefix-on", {"cache": {"backend": "prefix"}}, ("W5-shared", "W5-control")),
    ]


def policy_entries(policies: Sequence[str], prefix_installed: bool) -> list[MatrixEntry]:
    cache = {"cache": {"backend": "prefix"}} if prefix_installed else {}
    return [MatrixEntry(f"policy-{p}", deep_merge(cache, {"scheduler": {"policy": p}}),
                        ("W4", "W5-shared"), source="policy") for p in policies]


def missing_plugin(settings: dict[str, Any], pm) -> str | None:
    """Why ``settings`` cannot run here (a named plugin that is not installed), or None."""
    wanted = (("cache backend", settings.get("cache", {}).get("backend"), pm.cache_backends),
              ("scheduler policy", settings.get("scheduler", {}).get("policy"), pm.scheduler_policies))
    for kind, name, registry in wanted:
        if name is not None and name not in registry:
            known = FIRST_PARTY_NAMES.get(kind, {}).get(name)
            hint = f"; pip install {known.distribution}" if known else ""
            return f"{kind} '{name}' is not installed{hint}"
    return None


@dataclass
class MatrixResult:
    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    configs: dict[str, Any] = field(default_factory=dict)


def run_matrix(base_path: str | None, base_overrides: dict[str, Any], entries: Sequence[MatrixEntry],
               workloads: Callable[[Any, Sequence[str]], list[Workload]], *, model_label: str,
               make_llm: Callable[[EngineConfig], Any], log: Callable[[str], None] = print,
               on_result: Callable[..., None] | None = None) -> MatrixResult:
    """Run every entry on a fresh engine. ``workloads(llm, names)`` builds the named workloads
    for that engine (its vocabulary and tokenizer); ``make_llm(config)`` builds the engine;
    ``on_result(runs=..., skipped=..., configs=...)`` hears of each result as it comes."""
    def report(**parts: Any) -> None:
        if on_result is not None:
            on_result(**parts)

    result = MatrixResult()
    pm = make_plugin_manager()
    for entry in entries:
        what = f"{entry.name} ({', '.join(entry.workloads)})"
        reason = missing_plugin(entry.settings, pm)
        if reason is not None:
            result.skipped.append({"source": entry.source, "what": what, "reason": reason})
            report(skipped=result.skipped[-1:])
            log(f"skip {what}: {reason}")
            continue
        try:
            config = load_config(base_path, overrides=deep_merge(base_overrides, entry.settings))
            llm = make_llm(config)
        except InferError as exc:
            result.skipped.append({"source": entry.source, "what": what, "reason": str(exc)})
            report(skipped=result.skipped[-1:])
            log(f"skip {what}: {exc}")
            continue
        result.configs[entry.name] = config_to_dict(config)
        report(configs={entry.name: result.configs[entry.name]})
        try:
            for workload in workloads(llm, entry.workloads):
                log(f"{entry.source} {entry.name}: {workload.name} ({len(workload.requests)} requests)")
                run = run_offline(llm, workload)
                result.runs.append(run_entry(entry.source, workload, run.records, run.duration_s,
                                             model=model_label, config_name=entry.name, engine=run.engine))
                report(runs=result.runs[-1:])
                llm.engine.reset_prefix_cache()
        except Exception as exc:  # one broken configuration must not end the sweep
            result.skipped.append({"source": entry.source, "what": what,
                                   "reason": f"failed while running: {type(exc).__name__}: {exc}"[:500]})
            report(skipped=result.skipped[-1:])
            log(f"failed {what}: {type(exc).__name__}: {exc}")
        finally:
            del llm
            _free_device_memory()
    return result


def _free_device_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
