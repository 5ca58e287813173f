"""The soak in ``make test``: a real ``infer-serve`` subprocess (tiny Llama, prefix cache with a
KV pool small enough that requests are preempted) under the chaos mix for about a minute; every
check of the harness must pass (no block owned, no request state left, no 5xx but 503, one
terminal event per request, /health throughout, a clean SIGTERM exit). ``make soak`` is the
30-minute version (docs/reliability.md)."""

from __future__ import annotations

import json
import os

import pytest

from infer_core.bench.cli import main as bench_main

from .conftest import tiny_model

SOAK_S = float(os.environ.get("INFER_SOAK_S", "60"))
SERVER = ["--model.device", "cpu", "--model.max_model_len", "256", "--scheduler.max_num_seqs", "8",
          "--cache.backend", "prefix", "--cache.num_blocks", "24", "--server.max_body_bytes", "65536"]


@pytest.mark.slow
@pytest.mark.timeout(SOAK_S + 240)
def test_soak_leaves_nothing_behind(tmp_path, capsys):
    status = bench_main(["soak", "--model", tiny_model(), "--duration", str(SOAK_S),
                         "--concurrency", "16", "--out", str(tmp_path), *SERVER])
    report = json.loads((tmp_path / "report.json").read_text())
    failed = {name: check for name, check in report["checks"].items() if not check["passed"]}
    assert not failed, (failed, report["first_problems"])
    assert status == 0 and report["passed"]
    # the run exercised what it claims to: cancels, malformed requests, preemption, streams
    assert report["cancelled"] > 0 and report["by_kind"].get("malformed", 0) > 0
    assert report["server"]["preemptions"] > 0 and report["completed_streams"] > 0
    assert report["server"]["finished_by_reason"].get("abort", 0) > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_burst_is_refused_with_503_quickly(tmp_path):
    status = bench_main(["soak", "--burst", "--model", tiny_model(), "--duration", "10",
                         "--calibrate", "6", "--out", str(tmp_path), *SERVER])
    report = json.loads((tmp_path / "report.json").read_text())
    failed = {name: check for name, check in report["checks"].items() if not check["passed"]}
    assert not failed, (failed, report["first_problems"])
    assert status == 0 and report["burst"]["refused_503"] > 0
    assert report["by_status"].get("500", 0) == 0
