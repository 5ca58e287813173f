"""`infer debug diff`: per-layer comparison against transformers."""

from __future__ import annotations

import re

import pytest
import torch

from infer_core.cli import main

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, vocab_size=64, max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def _rows(out: str) -> dict[str, tuple[float, float]]:
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(layer \d+|logits)\s+(\S+)\s+(\S+)$", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return rows


def test_reports_every_layer_and_the_logits(tiny_llama, capsys):
    assert main(["debug", "diff", "--model", str(tiny_llama), "--token-ids", "5,9,2,33,7,1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("6 prompt tokens, float32\n")
    rows = _rows(out)
    assert list(rows) == ["layer 0", "layer 1", "layer 2", "logits"]
    assert all(abs_err < 1e-5 for abs_err, _ in rows.values())


def test_shows_where_our_model_departs(tiny_llama, capsys, monkeypatch):
    from infer_models_llama.model import LlamaDecoderLayer

    forward = LlamaDecoderLayer.forward
    layers_seen = []

    def off_from_layer_1(self, positions, h, residual, md):
        layers_seen.append(self)
        out, residual = forward(self, positions, h, residual, md)  # the hidden state is out + residual
        return ((out + residual) * 1.01, torch.zeros_like(residual)) if len(layers_seen) == 2 else (out, residual)

    monkeypatch.setattr(LlamaDecoderLayer, "forward", off_from_layer_1)
    assert main(["debug", "diff", "--model", str(tiny_llama), "--token-ids", "5,9,2,33"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["layer 0"][0] < 1e-5
    assert rows["layer 1"][1] > 5e-3  # ~1 % relative error, from the layer that departs
    assert rows["logits"][0] > 1e-4


def test_bad_token_ids_are_a_user_error(tiny_llama, capsys):
    assert main(["debug", "diff", "--model", str(tiny_llama), "--token-ids", "1,x"]) == 2
    assert capsys.readouterr().err == "error: --token-ids must be comma-separated integers, got '1,x'.\n"


def test_prompt_needs_a_tokenizer(tiny_llama, capsys):
    assert main(["debug", "diff", "--model", str(tiny_llama), "--prompt", "hi"]) == 2
    assert "has no tokenizer.json; pass --token-ids instead of --prompt." in capsys.readouterr().err
