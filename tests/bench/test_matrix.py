"""``infer-bench matrix``: entries run on fresh engines, prefix reuse shows in W5, entries whose
plugin is missing or whose settings cannot work are skipped with the reason."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infer_core import LLM
from infer_core.bench.cli import main
from infer_core.bench.matrix import (
    MatrixEntry,
    matrix_entries,
    missing_plugin,
    policy_entries,
    run_matrix,
)
from infer_core.bench.text import TextMaker
from infer_core.bench.workloads import WorkloadOptions, make_workloads
from infer_core.config import load_config, parse_cli_overrides
from infer_core.plugins import make_plugin_manager
from infer_core.testing.fixtures import tiny_checkpoint

ENGINE = ["--model.device", "cpu", "--model.max_model_len", "256", "--cache.num_blocks", "64",
          "--scheduler.max_num_batched_tokens", "512", "--scheduler.max_num_seqs", "8"]


def test_missing_plugins_are_named_with_their_distribution():
    pm = make_plugin_manager()
    assert missing_plugin({"cache": {"backend": "contiguous"}}, pm) is None
    assert missing_plugin({"scheduler": {"policy": "lottery"}}, pm) == "scheduler policy 'lottery' is not installed"
    pm = make_plugin_manager(blocked=frozenset({"infer_cache_paged"}))
    assert missing_plugin({"cache": {"backend": "paged"}}, pm) == (
        "cache backend 'paged' is not installed; pip install infer-cache-paged")


def test_entries():
    base = load_config(overrides={"model": {"max_model_len": 4096}, "scheduler": {"max_num_batched_tokens": 2048}})
    entries = {e.name: e for e in matrix_entries(base)}
    assert list(entries) == ["static", "continuous", "paged", "in-order", "chunked-on", "chunked-off", "prefix-off",
                             "prefix-on"]
    assert entries["in-order"].settings == {"cache": {"backend": "paged"}, "scheduler": {"async_scheduling": False}}
    off = entries["chunked-off"].settings["scheduler"]
    assert off["chunked_prefill"] is False and off["max_num_batched_tokens"] == 4096
    assert entries["chunked-on"].settings["scheduler"]["prefill_chunk_size"] == 512
    (p,) = policy_entries(["round_robin"], prefix_installed=True)
    assert p.settings == {"cache": {"backend": "prefix"}, "scheduler": {"policy": "round_robin"}}
    assert p.workloads == ("W4", "W5-shared") and p.source == "policy"


def test_matrix_run_writes_runs_skips_and_configs(tmp_path):
    if "prefix" not in make_plugin_manager().cache_backends:
        pytest.skip("infer-cache-paged is not installed")
    ck = tiny_checkpoint("llama", tokenizer=True, vocab_size=512, max_position_embeddings=512)
    overrides = parse_cli_overrides(["--model.path", str(ck), *ENGINE])
    prefix_on = next(e for e in matrix_entries(load_config(overrides=overrides)) if e.name == "prefix-on")
    entries = [MatrixEntry("broken", {"scheduler": {"max_num_seqs": 4096}}, ("W4",)),
               MatrixEntry("lottery", {"scheduler": {"policy": "lottery"}}, ("W4",)), prefix_on]
    opts = WorkloadOptions(vocab_size=512, scale=0.05, num_prompts=3)

    def workloads(llm, names):
        return make_workloads(names, replace(opts, text_maker=TextMaker(llm.tokenizer)))

    result = run_matrix(None, overrides, entries, workloads, model_label="tiny",
                        make_llm=lambda cfg: LLM(config=cfg), log=lambda _: None)
    runs = {(r["config_name"], r["workload"]): r for r in result.runs}
    assert set(runs) == {("prefix-on", "W5-shared"), ("prefix-on", "W5-control")}
    assert runs["prefix-on", "W5-shared"]["engine"]["prefix_cache_hit_rate"] > 0
    assert runs["prefix-on", "W5-control"]["engine"]["prefix_cache_hit_rate"] == 0
    assert all(r["metrics"]["failed"] == 0 and r["source"] == "matrix" for r in runs.values())
    reasons = {s["what"]: s["reason"] for s in result.skipped}
    assert reasons["lottery (W4)"] == "scheduler policy 'lottery' is not installed"
    assert "max_num_seqs (4096) exceeds" in reasons["broken (W4)"]
    assert set(result.configs) == {"prefix-on"} and result.configs["prefix-on"]["cache"]["backend"] == "prefix"


def test_cli_rejects_unknown_entries(capsys):
    assert main(["matrix", "--configs", "paged,turbo", "--policies", "none", *ENGINE]) == 2
    assert "no matrix entry named turbo; entries: static, continuous," in capsys.readouterr().err
