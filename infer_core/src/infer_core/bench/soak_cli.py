"""``infer-bench soak``: start an ``infer-serve`` with a small KV pool, run the soak (or, with
``--burst``, the overload run) against it, stop it with SIGTERM and write the report.

    infer-bench soak --model DIR [--config engine.toml] [--duration 60] [--concurrency N]
                     [--burst] [--section.key VALUE ...]    # extra keys go to infer-serve

The report goes to ``benchmarks/reports/soak-<date>-<mode>/`` (``report.json`` and
``summary.md``); the exit status is 0 when every check passed, 1 when one failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from infer_core.bench.chaos import ChaosMix
from infer_core.bench.soak import ServerShape, SoakOptions, run_burst, run_soak
from infer_core.bench.soak_server import ManagedServer
from infer_core.config import load_config, parse_cli_overrides

REPORTS = Path("benchmarks/reports")


def add_parser(commands) -> None:
    soak = commands.add_parser("soak", help="reliability soak (chaos) or --burst (overload) against a server it starts")
    soak.add_argument("--model", required=True, help="model directory to serve")
    soak.add_argument("--config", default=None, help="engine TOML for the server")
    soak.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    soak.add_argument("--concurrency", type=int, default=None, help="concurrent streams (default 2 x max_num_seqs)")
    soak.add_argument("--cancel-share", type=float, default=0.2, help="share of requests the client abandons")
    soak.add_argument("--malformed-share", type=float, default=0.1, help="share of malformed / over-limit requests")
    soak.add_argument("--burst", action="store_true", help="overload: burst-factor x the sustainable rate")
    soak.add_argument("--burst-factor", type=float, default=4.0)
    soak.add_argument("--calibrate", type=float, default=15.0, help="burst: seconds measuring the sustainable rate")
    soak.add_argument("--seed", type=int, default=0)
    soak.add_argument("--max-rss-growth-mib", type=float, default=256.0)
    soak.add_argument("--out", type=Path, default=None, help="report directory (default benchmarks/reports/soak-<date>-<mode>/)")


def server_overrides(extra: Sequence[str], config: str | None, burst: bool) -> tuple[list[str], ServerShape]:
    """The ``infer-serve`` flags: the user's, plus a KV pool small enough that requests get
    preempted (unless ``cache.num_blocks`` is set) and, for a burst, a short queue."""
    given = parse_cli_overrides(list(extra))
    overrides = list(extra)
    cfg = load_config(config, overrides)
    if cfg.cache.num_blocks is None and "num_blocks" not in given.get("cache", {}):
        blocks = max(2, cfg.scheduler.max_num_seqs // 2) if cfg.cache.backend == "contiguous" \
            else 2 * cfg.scheduler.max_num_seqs
        overrides += ["--cache.num_blocks", str(blocks)]
    if burst and "max_waiting_requests" not in given.get("server", {}):
        overrides += ["--server.max_waiting_requests", str(cfg.scheduler.max_num_seqs)]
    cfg = load_config(config, overrides)
    shape = ServerShape(cfg.scheduler.max_num_seqs, cfg.model.max_model_len or 0, cfg.server.max_body_bytes,
                        preempts=cfg.cache.backend != "contiguous")
    return overrides, shape


def cmd_soak(args: argparse.Namespace, extra: Sequence[str], log) -> int:
    overrides, shape = server_overrides(extra, args.config, args.burst)
    mode = "burst" if args.burst else "soak"
    out = args.out or REPORTS / f"soak-{time.strftime('%Y-%m-%d')}-{mode}"
    options = SoakOptions(
        duration_s=args.duration, concurrency=args.concurrency or 2 * shape.max_num_seqs,
        mix=ChaosMix(cancel=args.cancel_share, malformed=args.malformed_share), seed=args.seed,
        max_rss_growth_mib=args.max_rss_growth_mib, burst_factor=args.burst_factor,
        calibrate_s=args.calibrate)
    server = ManagedServer(args.model, overrides, out / "server.log", config=args.config)
    log(f"starting infer-serve {' '.join(overrides)}")
    server.start()
    try:
        models = httpx.get(f"{server.url}/v1/models", headers=server.headers).json()
        shape = replace(shape, max_model_len=models["data"][0]["max_model_len"])
        log(f"{mode}: {options.concurrency if mode == 'soak' else 'open-loop'} streams for "
            f"{options.duration_s:.0f} s against {server.url}")
        runner = run_burst if args.burst else run_soak
        report = asyncio.run(runner(server, shape, options))
    finally:
        exit_status = server.stop()
    report["server"]["exit_status_after_sigterm"] = exit_status
    report["server"]["overrides"] = overrides
    tracebacks = server.log_path.read_text(errors="replace").count("Traceback")
    report["checks"]["server_exits_cleanly"] = {"passed": exit_status == 0, "status": exit_status}
    report["checks"]["no_tracebacks_in_server_log"] = {"passed": tracebacks == 0, "count": tracebacks}
    report["passed"] = all(c["passed"] for c in report["checks"].values())
    for path in write_report(out, report):
        log(f"wrote {path}")
    print(summary(report), flush=True)
    return 0 if report["passed"] else 1


def write_report(out: Path, report: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "summary.md"]
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    paths[1].write_text(summary(report), encoding="utf-8")
    return paths


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def summary(report: dict[str, Any]) -> str:
    lines = [f"# infer-bench {report['mode']}: {'PASSED' if report['passed'] else 'FAILED'}", "",
             f"{report['duration_s']} s of load, drained in {report['drain_s']} s; "
             f"options {report['options']}; server {report['shape']}.", "",
             "| check | passed | details |", "|---|---|---|"]
    for name, check in report["checks"].items():
        details = ", ".join(f"{k} {_fmt(v)}" for k, v in check.items() if k != "passed")
        lines.append(f"| {name} | {'yes' if check['passed'] else '**NO**'} | {details} |")
    lines += ["", f"Requests: {report['requests']} ({report['cancelled']} abandoned by the client); "
              f"by kind {report['by_kind']}; by status {report['by_status']}.", "",
              f"Server: {report['server']}.", "", f"Health: {report['health']}."]
    if "burst" in report:
        lines += ["", f"Burst: {report['burst']}."]
    if report["first_problems"]:
        lines += ["", "First problems:", *(f"- {p}" for p in report["first_problems"])]
    return "\n".join(lines) + "\n"
