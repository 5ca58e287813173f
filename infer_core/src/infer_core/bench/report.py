"""Benchmark reports: one ``report.json`` per directory holding every figure, plus
``summary.md`` and PNG plots made from it.

Each command (``offline``, ``serve``, ``hf``, ``matrix``) merges its runs into the
``report.json`` of its directory — by default ``benchmarks/reports/<date>-<device>/`` — so that
the commands of one benchmark session make one report: a run replaces an earlier run with the
same source, model, workload and configuration name. The JSON holds, besides the runs, the
environment (versions, device, commit), each model's bytes per decode step, the measured copy
bandwidth, each effective engine configuration, and what was skipped and why.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from infer_core.bench.metrics import RequestRecord, percentile, summarize, summarize_by_tag
from infer_core.bench.roofline import ModelBytes, decode_step_seconds
from infer_core.bench.workloads import Workload

SCHEMA_VERSION = 1
REPORT_FILE = "report.json"
SUMMARY_FILE = "summary.md"
DISTRIBUTIONS = ("infer-core", "infer-models-llama", "infer-models-qwen3", "infer-models-gemma3",
                 "infer-cache-paged", "infer-sched-policies", "torch", "triton", "transformers",
                 "tokenizers", "httpx")


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def device_name(device: str = "auto") -> str:
    """``NVIDIA H200`` on CUDA, else the CPU's name."""
    try:
        import torch

        if device != "cpu" and torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def git_commit(cwd: Path | None = None) -> dict[str, Any] | None:
    """``$INFER_BENCH_COMMIT`` (``<sha>`` or ``<sha> dirty``) when set — a tree copied to a GPU
    machine may carry a stale ``.git`` — else HEAD and whether tracked files differ from it."""
    given = os.environ.get("INFER_BENCH_COMMIT", "").split()
    if given:
        return {"sha": given[0], "dirty": "dirty" in given[1:], "source": "INFER_BENCH_COMMIT"}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": head, "dirty": bool(dirty)}


def environment(device: str = "auto") -> dict[str, Any]:
    return {"device": device_name(device), "platform": platform.platform(), "versions": versions(),
            "commit": git_commit(), "argv": sys.argv}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def default_report_dir(device: str, root: Path = Path("benchmarks/reports")) -> Path:
    return root / f"{datetime.now(UTC):%Y-%m-%d}-{slug(device)}"


def run_entry(source: str, workload: Workload, records: list[RequestRecord], duration_s: float, *,
              model: str, config_name: str | None = None, **extra: Any) -> dict[str, Any]:
    """One run: the workload's shape, every metric, per-tag metrics and extras (notes, stats)."""
    metrics = summarize(records, duration_s)
    entry = {
        "source": source, "model": model, "workload": workload.name, "family": workload.family,
        "config_name": config_name, "workload_info": workload.to_dict(),
        "metrics": metrics.to_dict(),
        "by_tag": {tag: m.to_dict() for tag, m in summarize_by_tag(records, duration_s).items()},
        "samples": samples(records),
        **extra,
    }
    if workload.headline == "ms_per_output_token":
        ok = [r for r in records if r.success and r.num_output_tokens]
        entry["ms_per_output_token"] = metrics.tpot_ms.mean
        entry["e2e_ms_per_output_token"] = (
            sum(r.latency for r in ok) * 1000 / sum(r.num_output_tokens for r in ok) if ok else None)
    return entry


def samples(records: list[RequestRecord]) -> dict[str, list[float]]:
    """What the plots need: per-request TTFT and TPOT, and the pooled ITL as its 101 percentiles
    (0, 1, ..., 100) — enough for a CDF without storing every gap."""
    ok = [r for r in records if r.success]
    itl = [g * 1000 for r in ok for g in r.itl]
    return {
        "ttft_ms": [round(r.ttft * 1000, 4) for r in ok if r.ttft is not None],
        "tpot_ms": [round(r.tpot * 1000, 4) for r in ok if r.tpot is not None],
        "itl_ms_percentiles": [round(percentile(itl, q), 4) for q in range(101)] if itl else [],
    }


def _key(run: dict[str, Any]) -> tuple:
    return (run["source"], run["model"], run["workload"], run.get("config_name"))


def new_report(device: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {"schema": SCHEMA_VERSION, "created": now, "updated": now, "environment": environment(device),
            "bandwidth": None, "models": {}, "configs": {}, "runs": [], "skipped": [], "notes": []}


def load_report(directory: Path, device: str = "auto") -> dict[str, Any]:
    path = directory / REPORT_FILE
    if path.is_file():
        report = json.loads(path.read_text(encoding="utf-8"))
        if report.get("schema") == SCHEMA_VERSION:
            return report
    return new_report(device)


def merge(report: dict[str, Any], *, runs: list[dict] = (), skipped: list[dict] = (),
          models: dict | None = None, configs: dict | None = None, bandwidth: dict | None = None,
          notes: list[str] = (), new_models_only: bool = False,
          environment: dict | None = None) -> dict[str, Any]:
    """Add runs (replacing runs with the same key), skips, models, configs and notes.
    ``new_models_only``: keep what the report already says of a model (an offline run knows
    its dtype; a client only assumes one). ``environment``: where the added runs were
    measured (another report's, when merging); default: this process's versions and commit."""
    keys = {_key(r) for r in runs}
    report["runs"] = [r for r in report["runs"] if _key(r) not in keys] + list(runs)
    skip_keys = {(s.get("source"), s.get("what")) for s in skipped}
    report["skipped"] = [s for s in report["skipped"] if (s.get("source"), s.get("what")) not in skip_keys]
    report["skipped"] += list(skipped)
    for label, info in (models or {}).items():
        if not (new_models_only and label in report["models"]):
            report["models"][label] = info
    report["configs"].update(configs or {})
    if bandwidth is not None:
        report["bandwidth"] = bandwidth
    report["notes"] += [n for n in notes if n not in report["notes"]]
    report["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["environment"] = environment or {**report["environment"], "versions": versions(), "commit": git_commit()}
    return report


def roofline_of(run: dict[str, Any], report: dict[str, Any]) -> dict[str, Any] | None:
    """The decode roofline of a run and how close it came (needs the model's bytes and the
    measured bandwidth in the report)."""
    model = report["models"].get(run["model"], {}).get("bytes")
    bw = (report.get("bandwidth") or {}).get("bytes_per_s")
    info = run["workload_info"]
    if not model or not bw or not info["num_requests"]:
        return None
    mb = ModelBytes(**model)
    n = info["num_requests"]
    context = (info["prompt_tokens"] + info["output_tokens"] / 2) / n
    if run.get("ms_per_output_token") is not None:
        bound_ms = decode_step_seconds(mb, 1, context, bw) * 1000
        achieved = run["ms_per_output_token"]
        return {"batch": 1, "mean_context": context, "bound_ms_per_token": bound_ms,
                "fraction_of_roofline": bound_ms / achieved if achieved else None}
    config = report["configs"].get(run.get("config_name") or "", {})
    max_seqs = config.get("scheduler", {}).get("max_num_seqs") or n
    batch = min(n, info.get("max_concurrency") or n, max_seqs)
    bound_tps = batch / decode_step_seconds(mb, batch, context, bw)
    achieved = run["metrics"]["output_throughput"]
    return {"batch": batch, "mean_context": context, "bound_output_tokens_per_s": bound_tps,
            "fraction_of_roofline": achieved / bound_tps if bound_tps else None}


def write_report(directory: Path, report: dict[str, Any], *, plots: bool = True) -> list[Path]:
    """Write ``report.json``, ``summary.md`` and the plots; returns the files written."""
    from infer_core.bench.summary import summary_markdown

    directory.mkdir(parents=True, exist_ok=True)
    for run in report["runs"]:
        run["roofline"] = roofline_of(run, report)
    written = []
    if plots:
        from infer_core.bench.plots import write_plots

        files, note = write_plots(report, directory)
        written += files
        if note and note not in report["notes"]:
            report["notes"].append(note)
    report["plots"] = [p.name for p in written]
    _write_atomic(directory / REPORT_FILE, json.dumps(report, indent=2, default=str) + "\n")
    _write_atomic(directory / SUMMARY_FILE, summary_markdown(report))
    return [directory / REPORT_FILE, directory / SUMMARY_FILE, *written]


def _write_atomic(path: Path, text: str) -> None:
    """Write then rename, so that a run killed by its time limit never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
