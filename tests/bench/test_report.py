"""Reports: runs merge by key, the roofline arithmetic, the HF side-by-side ratios in the
summary, plots when matplotlib is installed."""

from __future__ import annotations

import json

import pytest

from infer_core.bench import report as rpt
from infer_core.bench.metrics import RequestRecord
from infer_core.bench.roofline import ModelBytes, decode_step_seconds, model_bytes
from infer_core.bench.workloads import BenchRequest, Workload
from infer_core.testing.fixtures import tiny_checkpoint


def workload(name: str, n: int, headline: str = "output_throughput") -> Workload:
    reqs = [BenchRequest(max_tokens=3, prompt_len=5, prompt_token_ids=[1] * 5) for _ in range(n)]
    return Workload(name, name, "test", reqs, headline=headline)


def records(n: int, gap: float) -> list[RequestRecord]:
    return [RequestRecord(prompt_tokens=5, start=0.0, end=0.1 + 2 * gap,
                          token_times=[0.1, 0.1 + gap, 0.1 + 2 * gap]) for _ in range(n)]


def report_with(*runs) -> dict:
    report = rpt.new_report("cpu")
    bytes_ = ModelBytes(num_params=1000, weights_bytes=2_000_000, kv_bytes_per_token=1000, dtype="bfloat16")
    rpt.merge(report, runs=list(runs), models={"m": {"bytes": bytes_.to_dict()}},
              bandwidth={"bytes_per_s": 1e9, "method": "test"}, configs={"default": {"scheduler": {"max_num_seqs": 2}}})
    return report


def test_roofline_arithmetic():
    w1 = rpt.run_entry("offline", workload("W1", 1, "ms_per_output_token"), records(1, 0.004), 1.0,
                       model="m", config_name="default")
    roof = rpt.roofline_of(w1, report_with(w1))
    # one sequence, mean context 5 + 3/2; (2e6 + 6.5 * 1000) bytes at 1 GB/s
    assert roof["bound_ms_per_token"] == pytest.approx(2.0065)
    assert roof["fraction_of_roofline"] == pytest.approx(2.0065 / 4.0)
    w4 = rpt.run_entry("offline", workload("W4", 4), records(4, 0.004), 1.0, model="m", config_name="default")
    roof = rpt.roofline_of(w4, report_with(w4))
    assert roof["batch"] == 2  # max_num_seqs of the run's config
    assert roof["bound_output_tokens_per_s"] == pytest.approx(2 / ((2e6 + 2 * 6.5 * 1000) / 1e9))
    assert decode_step_seconds(ModelBytes(1, 10, 1, "x"), 2, 5, 10.0) == pytest.approx(2.0)


def test_model_bytes_reads_safetensors_headers():
    ck = tiny_checkpoint("llama", tokenizer=True, vocab_size=512, max_position_embeddings=512)
    mb = model_bytes(ck, "bfloat16")
    embed = 512 * 64
    assert mb.num_params > embed
    assert mb.weights_bytes == (mb.num_params - embed) * 2  # untied: the lookup reads B rows only
    assert mb.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2


def test_merge_replaces_runs_with_the_same_key():
    a = rpt.run_entry("offline", workload("W4", 2), records(2, 0.01), 1.0, model="m", config_name="default")
    b = rpt.run_entry("offline", workload("W4", 2), records(2, 0.02), 1.0, model="m", config_name="default")
    c = rpt.run_entry("hf", workload("W4", 2), records(2, 0.03), 1.0, model="m")
    report = report_with(a, c)
    rpt.merge(report, runs=[b], skipped=[{"source": "hf", "what": "W2", "reason": "r1"}])
    rpt.merge(report, skipped=[{"source": "hf", "what": "W2", "reason": "r2"}])
    assert [r["source"] for r in report["runs"]] == ["hf", "offline"]
    assert report["runs"][1]["metrics"]["itl_ms"]["mean"] == pytest.approx(20)
    assert report["skipped"] == [{"source": "hf", "what": "W2", "reason": "r2"}]


def test_merging_another_report_keeps_where_it_was_measured(monkeypatch):
    report = report_with()
    there = {"device": "NVIDIA H200", "versions": {"torch": "2.11.0"}, "commit": {"sha": "abc", "dirty": False}}
    rpt.merge(report, runs=[], environment=there)
    assert report["environment"] == there  # not this machine's versions
    monkeypatch.setenv("INFER_BENCH_COMMIT", "def123 dirty")
    rpt.merge(report, runs=[])  # measured here: this process's versions, the given commit
    assert report["environment"]["versions"] == rpt.versions()
    assert report["environment"]["commit"] == {"sha": "def123", "dirty": True, "source": "INFER_BENCH_COMMIT"}


def test_summary_has_the_side_by_side_ratio(tmp_path):
    ours = rpt.run_entry("offline", workload("W4", 2), records(2, 0.01), 1.0, model="m", config_name="default")
    theirs = rpt.run_entry("hf", workload("W4", 2), records(2, 0.01), 2.0, model="m", method="cb")
    w1 = rpt.run_entry("offline", workload("W1", 1, "ms_per_output_token"), records(1, 0.004), 1.0,
                       model="m", config_name="default")
    hf1 = rpt.run_entry("hf", workload("W1", 1, "ms_per_output_token"), records(1, 0.012), 1.0, model="m",
                        method="static")
    # an A/B entry of another configuration (after the default one) does not replace it
    other = rpt.run_entry("offline", workload("W1", 1, "ms_per_output_token"), records(1, 0.008), 1.0,
                          model="m", config_name="no-pdl")
    files = rpt.write_report(tmp_path, report_with(ours, theirs, w1, hf1, other), plots=False)
    summary = (tmp_path / "summary.md").read_text()
    assert "| m | W4 | 6 tok/s | 3 tok/s | 2.00× | 1 / 1 | cb |" in summary
    assert "| m | W1 | 4.00 ms/tok | 12.00 ms/tok | 3.00× | 1 / 1 | static |" in summary
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["runs"][0]["roofline"] is not None
    assert [p.name for p in files] == ["report.json", "summary.md"]


def test_plots_are_written_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    # the same concurrency under two server configurations (W3-c32 thread vs process): two lines
    w3 = [rpt.run_entry("serve", Workload(f"W3-c{c}", "W3", "t", workload("x", c).requests, max_concurrency=c),
                        records(c, 0.01), 1.0, model="m", config_name=name)
          for c in (1, 4) for name in ("thread", "process")]
    matrix = rpt.run_entry("matrix", workload("W4", 2), records(2, 0.01), 1.0, model="m", config_name="paged")
    ours = rpt.run_entry("offline", workload("W4", 2), records(2, 0.01), 1.0, model="m", config_name="default")
    theirs = rpt.run_entry("hf", workload("W4", 2), records(2, 0.01), 2.0, model="m")
    files = rpt.write_report(tmp_path, report_with(*w3, matrix, ours, theirs))
    names = {p.name for p in files}
    assert {"throughput_vs_concurrency.png", "ttft_itl.png", "matrix.png", "hf_side_by_side.png"} <= names
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)


def test_report_command_merges_reports_of_separate_runs(tmp_path):
    from infer_core.bench.cli import main

    first = rpt.run_entry("offline", workload("W1", 1, "ms_per_output_token"), records(1, 0.004), 1.0,
                          model="m", config_name="default")
    second = rpt.run_entry("serve", workload("W4", 2), records(2, 0.01), 1.0, model="m")
    rpt.write_report(tmp_path / "a", report_with(first), plots=False)
    rpt.write_report(tmp_path / "b", report_with(second), plots=False)
    assert main(["report", str(tmp_path / "a"), "--add", str(tmp_path / "b"), "--no-plots"]) == 0
    data = json.loads((tmp_path / "a" / "report.json").read_text())
    assert [(r["source"], r["workload"]) for r in data["runs"]] == [("offline", "W1"), ("serve", "W4")]
    assert main(["report", str(tmp_path / "a"), "--add", str(tmp_path / "missing")]) == 2
