"""The transformers side of the side by side on a tiny checkpoint: exact token counts and one
timestamp per token, through ``generate`` (static cache) and continuous batching."""

from __future__ import annotations

import pytest

from infer_core.bench.workloads import WorkloadOptions, make_workloads
from infer_core.testing.fixtures import tiny_checkpoint

pytest.importorskip("transformers")
from infer_core.bench import hf


@pytest.fixture(scope="module")
def model():
    return hf.load_model(str(tiny_checkpoint("llama", tokenizer=True, vocab_size=512, max_position_embeddings=512)),
                         "cpu", "float32")


def test_w1_through_generate_with_a_static_cache(model):
    (w1,) = make_workloads(["W1"], WorkloadOptions(vocab_size=512, scale=0.05))
    run = hf.run_hf(model, w1)
    (record,) = run.records
    assert run.method == "generate, static cache"
    assert record.num_output_tokens == len(record.token_times) == 13
    assert record.start < record.token_times[0] <= record.token_times[-1] <= record.end


def test_w4_through_continuous_batching(model):
    if not hasattr(model, "continuous_batching_context_manager"):
        pytest.skip("this transformers has no continuous batching")
    (w4,) = make_workloads(["W4"], WorkloadOptions(vocab_size=512, scale=0.05, num_prompts=3))
    run = hf.run_hf(model, w4)
    assert run.method.startswith("continuous batching")
    for record, req in zip(run.records, w4.requests, strict=True):
        assert record.success, record.error
        assert record.num_output_tokens == len(record.token_times) == req.max_tokens


def test_hf_command_repeats_w1_on_one_model(tmp_path):
    import json

    from infer_core.bench.cli import main

    checkpoint = tiny_checkpoint("llama", tokenizer=True, vocab_size=512, max_position_embeddings=512)
    assert main(["hf", "--model", str(checkpoint), "--device", "cpu", "--workload", "W1", "--scale", "0.05",
                 "--repeats", "2", "--out", str(tmp_path), "--label", "tiny", "--no-plots"]) == 0
    (entry,) = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert entry["source"] == "hf" and entry["repeats"] == 2 and len(entry["runs"]) == 2
    assert all(r["ms_per_output_token"] is not None for r in entry["runs"])
    assert entry["spread"]["metric"] == "ms_per_output_token"
