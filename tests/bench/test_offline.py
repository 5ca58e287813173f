"""``infer-bench offline`` on a tiny checkpoint: a few requests, a valid report (no figure is
asserted: timing belongs in benchmarks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infer_core.bench.cli import main
from infer_core.testing.fixtures import tiny_checkpoint

ENGINE = ["--model.device", "cpu", "--model.max_model_len", "256", "--cache.num_blocks", "8",
          "--scheduler.max_num_batched_tokens", "512", "--scheduler.max_num_seqs", "8"]


@pytest.fixture(scope="module")
def checkpoint():
    return tiny_checkpoint("llama", tokenizer=True, vocab_size=512, max_position_embeddings=512)


@pytest.fixture(scope="module")
def report(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    code = main(["offline", "--model", str(checkpoint), "--workload", "W1,W3,W4,W5", "--scale", "0.05",
                 "--num-prompts", "3", "--out", str(out), "--label", "tiny", "--no-plots", *ENGINE])
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


def test_report_holds_every_run_with_exact_lengths(report):
    _, data = report
    runs = {r["workload"]: r for r in data["runs"]}
    assert set(runs) == {"W1", "W4", "W5-shared", "W5-control"}
    for run in runs.values():
        m = run["metrics"]
        assert run["source"] == "offline" and run["model"] == "tiny" and run["config_name"] == "default"
        assert m["failed"] == 0 and m["errors"] == []
        assert m["completed"] == run["workload_info"]["num_requests"]
        assert m["total_output_tokens"] == run["workload_info"]["output_tokens"]  # ignore_eos: exact
        assert m["short_outputs"] == 0
        assert m["ttft_ms"]["count"] == m["completed"]
        assert m["itl_ms"]["count"] == m["total_output_tokens"] - m["completed"]
        assert len(run["samples"]["itl_ms_percentiles"]) == 101
    w1 = runs["W1"]
    assert w1["workload_info"]["prompt_tokens"] == 13 and w1["workload_info"]["output_tokens"] == 13
    assert w1["ms_per_output_token"] == w1["metrics"]["tpot_ms"]["mean"]
    assert w1["roofline"]["batch"] == 1 and w1["roofline"]["bound_ms_per_token"] > 0


def test_report_records_config_environment_and_skips(report):
    out, data = report
    assert data["configs"]["default"]["model"]["max_model_len"] == 256
    assert data["configs"]["default"]["scheduler"]["max_num_seqs"] == 8
    versions = data["environment"]["versions"]
    assert versions["infer-core"] and versions["torch"]
    assert data["bandwidth"]["bytes_per_s"] > 0
    model = data["models"]["tiny"]
    assert model["architecture"] == "LlamaForCausalLM"
    assert model["bytes"]["dtype"] == "float32" and model["bytes"]["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4
    assert {s["what"] for s in data["skipped"]} == {"W3-c1", "W3-c8", "W3-c32", "W3-c128"}
    summary = (out / "summary.md").read_text()
    assert "| tiny | W1 | offline | default |" in summary
    assert "W3-c8 — concurrency levels need a client" in summary


def test_a_second_command_merges_into_the_same_report(report, checkpoint):
    out, _ = report
    assert main(["offline", "--model", str(checkpoint), "--workload", "W1", "--scale", "0.05", "--out", str(out),
                 "--label", "tiny", "--name", "small-budget", "--no-plots", *ENGINE,
                 "--scheduler.max_num_batched_tokens", "64"]) == 0
    data = json.loads((out / "report.json").read_text())
    keys = [(r["workload"], r["config_name"]) for r in data["runs"]]
    assert keys.count(("W1", "default")) == 1 and ("W1", "small-budget") in keys
    assert data["configs"]["small-budget"]["scheduler"]["max_num_batched_tokens"] == 64


def test_user_errors_are_one_sentence(checkpoint, capsys):
    assert main(["offline", "--model", str(checkpoint), "--workload", "W7", *ENGINE]) == 2
    assert "error: unknown workload 'W7'" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("infer-bench")
    if not exe.exists():
        pytest.skip("infer-bench is not installed beside this Python (run from the project's venv)")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "offline" in out.stdout and "matrix" in out.stdout
