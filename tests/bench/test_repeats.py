"""Repeated runs (``--repeats``): the median arithmetic on synthetic runs, the report keeping
each run, runs and spread in the summary, old reports without ``runs``, and ``infer-bench
offline --repeats 2`` end to end on a tiny checkpoint (structure only, no figure)."""

from __future__ import annotations

import json
import statistics

import pytest

from infer_core.bench import report as rpt
from infer_core.bench.cli import Repeats, ReportWriter, main
from infer_core.bench.metrics import RequestRecord
from infer_core.bench.repeats import combine_runs, median, median_of, runs_text, spread_text
from infer_core.bench.workloads import BenchRequest, Workload
from infer_core.testing.fixtures import tiny_checkpoint

THROUGHPUTS = ("request_throughput", "output_throughput", "total_token_throughput")
DISTRIBUTIONS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")
STATS = ("mean", "p50", "p90", "p99", "min", "max")

# (duration s, inter-token gap s, TTFT s) per run: the order of the runs differs per metric, so
# the medians of throughput, ITL and TTFT come from different runs
RUNS = [(1.0, 0.010, 0.3), (2.0, 0.030, 0.1), (4.0, 0.020, 0.2), (0.5, 0.040, 0.4), (3.0, 0.025, 0.15)]


def workload(name: str, n: int, headline: str = "output_throughput") -> Workload:
    reqs = [BenchRequest(max_tokens=3, prompt_len=5, prompt_token_ids=[1] * 5) for _ in range(n)]
    return Workload(name, name, "test", reqs, headline=headline)


def records(n: int, gap: float, ttft: float, fail: int = 0) -> list[RequestRecord]:
    """n requests of 3 tokens; request k's gaps are (1 + k/2)·gap, so percentiles differ."""
    out = []
    for k in range(n):
        g = gap * (1 + k / 2)
        times = [ttft + k * 0.01, ttft + k * 0.01 + g, ttft + k * 0.01 + 2 * g]
        out.append(RequestRecord(prompt_tokens=5, start=0.0, end=times[-1], token_times=times,
                                 expected_output_tokens=3, tag="short" if k else "long"))
    for _ in range(fail):
        out.append(RequestRecord(prompt_tokens=5, start=0.0, end=0.1, success=False, error="boom"))
    return out


def entries(runs, name: str = "W4", n: int = 3, headline: str = "output_throughput", source: str = "offline"):
    return [rpt.run_entry(source, workload(name, n, headline), records(n, gap, ttft), duration, model="m",
                          config_name="default" if source == "offline" else None,
                          engine={"prefix_cache_hit_rate": i / 10, "num_preemptions": i})
            for i, (duration, gap, ttft) in enumerate(runs)]


def report_with(*runs) -> dict:
    report = rpt.new_report("cpu")
    rpt.merge(report, runs=list(runs))
    return report


def test_median_of_odd_and_even_counts():
    assert median([3, 1, 2]) == 2 and isinstance(median([3, 1, 2]), int)
    assert median([4, 1, 3, 2]) == 2.5
    assert median([2, 4]) == 3 and isinstance(median([2, 4]), int)  # integral mean of ints stays an int
    assert median([1.0, 2.0]) == 1.5
    assert median([None, 5, None]) == 5 and median([None, None]) is None and median([]) is None
    assert median_of([{"a": {"b": 1}, "c": "x"}, {"a": {"b": 3}, "c": "y"}, {"a": {"b": 2}, "c": "z"}]) == \
        {"a": {"b": 2}, "c": "x"}


@pytest.mark.parametrize("n_runs", [1, 2, 3, 4, 5])
def test_every_metric_is_the_median_over_the_runs(n_runs):
    runs = entries(RUNS[:n_runs])
    combined = combine_runs(runs, repeats=n_runs)
    m = combined["metrics"]
    for key in THROUGHPUTS:
        assert m[key] == pytest.approx(statistics.median(r["metrics"][key] for r in runs)), key
    for dist in DISTRIBUTIONS:
        for stat in STATS:
            expected = statistics.median(r["metrics"][dist][stat] for r in runs)
            assert m[dist][stat] == pytest.approx(expected), (dist, stat)
    for tag in ("long", "short"):  # per-tag metrics too (W6's headline is by_tag.short)
        assert combined["by_tag"][tag]["itl_ms"]["p99"] == pytest.approx(
            statistics.median(r["by_tag"][tag]["itl_ms"]["p99"] for r in runs))
    assert combined["engine"]["prefix_cache_hit_rate"] == pytest.approx(
        statistics.median(r["engine"]["prefix_cache_hit_rate"] for r in runs))
    assert m["completed"] == 3 and m["total_output_tokens"] == 9 and m["failed"] == 0
    assert len(combined["runs"]) == combined["repeats"] == n_runs
    assert [r["metrics"] for r in combined["runs"]] == [r["metrics"] for r in runs]  # each run kept as is
    spread = combined["spread"]
    outs = [r["metrics"]["output_throughput"] for r in runs]
    assert (spread["metric"], spread["min"], spread["max"]) == ("output_throughput", min(outs), max(outs))


def test_medians_of_different_metrics_come_from_different_runs():
    runs = entries(RUNS[:3])
    m = combine_runs(runs)["metrics"]
    # throughput: 9/1, 9/2, 9/4 → run 2's; mean ITL: 10, 30, 20 ms (×1.5) → run 3's; TTFT: run 3's
    assert m["output_throughput"] == runs[1]["metrics"]["output_throughput"]
    assert m["itl_ms"]["mean"] == runs[2]["metrics"]["itl_ms"]["mean"]
    assert m["ttft_ms"]["p50"] == runs[2]["metrics"]["ttft_ms"]["p50"]
    assert m["output_throughput"] != runs[2]["metrics"]["output_throughput"]


def test_even_count_takes_the_mean_of_the_middle_two():
    runs = entries(RUNS[:4])  # throughputs 9, 4.5, 2.25, 18 → (4.5 + 9) / 2
    combined = combine_runs(runs)
    assert combined["metrics"]["output_throughput"] == pytest.approx(6.75)
    # the plots' samples are the lower middle run's (4.5 tok/s, run 2)
    assert combined["samples_run"] == 1 and combined["samples"] == runs[1]["samples"]


def test_w1_headline_is_the_median_ms_per_token_with_its_spread():
    runs = entries([(1.0, 0.004, 0.1), (1.0, 0.012, 0.1), (1.0, 0.008, 0.1)], name="W1", n=1,
                   headline="ms_per_output_token")
    combined = combine_runs(runs)
    assert combined["ms_per_output_token"] == pytest.approx(8.0)
    assert combined["e2e_ms_per_output_token"] == pytest.approx(
        statistics.median(r["e2e_ms_per_output_token"] for r in runs))
    assert combined["spread"] == {"metric": "ms_per_output_token", "unit": "ms/tok",
                                  "min": pytest.approx(4.0), "max": pytest.approx(12.0)}
    assert spread_text(combined) == "4.00–12.00 ms/tok"
    assert [r["ms_per_output_token"] for r in combined["runs"]] == [r["ms_per_output_token"] for r in runs]


def test_a_failure_in_any_run_shows():
    runs = entries(RUNS[:3])
    runs[1] = rpt.run_entry("offline", workload("W4", 4), records(3, 0.01, 0.1, fail=1), 1.0, model="m",
                            config_name="default")
    m = combine_runs(runs)["metrics"]
    assert m["failed"] == 1 and m["errors"] == ["run 2: boom"]


def test_report_json_keeps_each_run_and_summary_shows_runs_and_spread(tmp_path):
    w4 = combine_runs(entries(RUNS[:3]), repeats=3)
    w1 = combine_runs(entries([(1.0, 0.004, 0.1), (1.0, 0.012, 0.1)], name="W1", n=1,
                              headline="ms_per_output_token"), repeats=3)  # stopped after 2 of 3
    rpt.write_report(tmp_path, report_with(w4, w1), plots=False)
    data = json.loads((tmp_path / "report.json").read_text())
    runs = {r["workload"]: r for r in data["runs"]}
    assert [len(runs["W4"]["runs"]), len(runs["W1"]["runs"])] == [3, 2]
    for run in runs["W4"]["runs"]:
        assert set(run) == {"metrics", "by_tag", "engine"}
    assert runs["W4"]["metrics"]["output_throughput"] == pytest.approx(4.5)
    summary = (tmp_path / "summary.md").read_text()
    assert "| failed | runs | spread |" in summary
    assert "| 0 | 3 | 2.2–9.0 tok/s |" in summary
    assert "| 0 | 2/3 | 4.00–12.00 ms/tok |" in summary
    assert "median" in summary


def test_hf_side_by_side_uses_the_medians(tmp_path):
    ours = combine_runs(entries([(1.0, 0.01, 0.1), (2.0, 0.01, 0.1), (4.0, 0.01, 0.1)]), repeats=3)  # 4.5 tok/s
    theirs = combine_runs(entries([(9.0, 0.01, 0.1)], source="hf"), repeats=1)  # 1 tok/s
    w1 = combine_runs(entries([(1.0, 0.002, 0.1), (1.0, 0.004, 0.1), (1.0, 0.030, 0.1)], name="W1", n=1,
                              headline="ms_per_output_token"))  # median 4 ms/tok
    hf1 = rpt.run_entry("hf", workload("W1", 1, "ms_per_output_token"), records(1, 0.012, 0.1), 1.0,
                        model="m", method="static")  # an entry without runs (HF run once, old style)
    rpt.write_report(tmp_path, report_with(ours, theirs, w1, hf1), plots=False)
    summary = (tmp_path / "summary.md").read_text()
    assert "| m | W4 | 4 tok/s | 1 tok/s | 4.50× | 3 / 1 |" in summary
    assert "| m | W1 | 4.00 ms/tok | 12.00 ms/tok | 3.00× | 3 / 1 | static |" in summary


def test_an_old_report_without_runs_renders_and_merges(tmp_path):
    old = rpt.run_entry("serve", workload("W4", 3), records(3, 0.01, 0.1), 1.0, model="m")
    old_w1 = rpt.run_entry("offline", workload("W1", 1, "ms_per_output_token"), records(1, 0.004, 0.1), 1.0,
                           model="m", config_name="default")
    rpt.write_report(tmp_path / "old", report_with(old, old_w1), plots=False)
    data = json.loads((tmp_path / "old" / "report.json").read_text())
    assert all("runs" not in r and "spread" not in r for r in data["runs"])
    assert runs_text(data["runs"][0]) == "1" and spread_text(data["runs"][0]) == "–"
    assert "| 0 | 1 | – |" in (tmp_path / "old" / "summary.md").read_text()

    new = combine_runs(entries(RUNS[:3]), repeats=3)
    rpt.write_report(tmp_path / "new", report_with(new), plots=False)
    # old into new, then new into old: both render, each entry keeps its shape
    assert main(["report", str(tmp_path / "new"), "--add", str(tmp_path / "old"), "--no-plots"]) == 0
    assert main(["report", str(tmp_path / "old"), "--add", str(tmp_path / "new"), "--no-plots"]) == 0
    for d in ("new", "old"):
        data = json.loads((tmp_path / d / "report.json").read_text())
        shapes = {(r["source"], r["workload"]): len(r.get("runs", [])) for r in data["runs"]}
        assert shapes == {("serve", "W4"): 0, ("offline", "W1"): 0, ("offline", "W4"): 3}
        summary = (tmp_path / d / "summary.md").read_text()
        assert "| 0 | 3 | 2.2–9.0 tok/s |" in summary and "| 0 | 1 | – |" in summary


def test_each_repeat_rewrites_the_entry_so_a_stopped_run_keeps_its_repeats(tmp_path):
    done = Repeats(ReportWriter(tmp_path, "cpu", plots=False), 3)
    runs = entries(RUNS[:2])
    done.add(runs[0])
    (entry,) = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert len(entry["runs"]) == 1 and runs_text(entry) == "1/3"
    done.add(runs[1])
    (entry,) = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert len(entry["runs"]) == 2 and runs_text(entry) == "2/3"
    assert entry["metrics"]["output_throughput"] == pytest.approx(6.75)


# -- end to end ------------------------------------------------------------------------------

ENGINE = ["--model.device", "cpu", "--model.max_model_len", "256", "--cache.num_blocks", "8",
          "--scheduler.max_num_batched_tokens", "512", "--scheduler.max_num_seqs", "8"]


@pytest.fixture(scope="module")
def checkpoint():
    return tiny_checkpoint("llama", tokenizer=True, vocab_size=512, max_position_embeddings=512)


def test_offline_repeats_end_to_end(checkpoint, tmp_path, capsys):
    code = main(["offline", "--model", str(checkpoint), "--workload", "W1,W4,W5-shared", "--scale", "0.05",
                 "--num-prompts", "3", "--repeats", "2", "--out", str(tmp_path), "--label", "tiny",
                 "--no-plots", *ENGINE])
    assert code == 0
    data = json.loads((tmp_path / "report.json").read_text())
    runs = {r["workload"]: r for r in data["runs"]}
    assert set(runs) == {"W1", "W4", "W5-shared"}
    for entry in runs.values():
        assert entry["repeats"] == 2 and len(entry["runs"]) == 2
        assert entry["spread"]["min"] <= entry["spread"]["max"]
        for run in entry["runs"]:
            m = run["metrics"]
            assert m["failed"] == 0 and m["completed"] == entry["workload_info"]["num_requests"]
            assert m["total_output_tokens"] == entry["workload_info"]["output_tokens"]
            assert "prefix_cache_hit_rate" in run["engine"]
        assert entry["metrics"]["completed"] == entry["workload_info"]["num_requests"]
    w1 = runs["W1"]
    assert w1["spread"]["metric"] == "ms_per_output_token" and len(w1["runs"]) == 2
    assert all(r["ms_per_output_token"] is not None for r in w1["runs"])
    # the prefix cache is reset before each repeat: both runs of W5-shared start cold alike
    hits = [r["engine"]["prefix_cache_hits"] for r in runs["W5-shared"]["runs"]]
    assert hits[0] == hits[1]
    summary = (tmp_path / "summary.md").read_text()
    assert "| runs | spread |" in summary
    assert summary.count(" ms/tok |") >= 1
    out = capsys.readouterr().out
    assert "[run 1/2]" in out and "[run 2/2]" in out and "[median of 2 runs" in out


def test_repeats_must_be_positive(checkpoint, capsys):
    assert main(["offline", "--model", str(checkpoint), "--workload", "W1", "--repeats", "0", *ENGINE]) == 2
    assert "error: --repeats must be >= 1, got 0" in capsys.readouterr().err
