"""Random-weight checkpoints at real shapes load in infer and in transformers alike (greedy
tokens agree); the shapes are the public ones."""

from __future__ import annotations

import json

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.bench.checkpoints import SHAPES, shape_config, write_random_checkpoint
from infer_core.errors import ConfigError

transformers = pytest.importorskip("transformers")


def test_public_shapes():
    llama = SHAPES["llama-3.2-1b"]
    assert (llama["hidden_size"], llama["num_hidden_layers"], llama["vocab_size"]) == (2048, 16, 128256)
    assert SHAPES["qwen3-0.6b"]["num_hidden_layers"] == 28 and SHAPES["qwen3-4b"]["hidden_size"] == 2560
    gemma = shape_config("gemma-3-1b", num_hidden_layers=7)
    assert gemma["layer_types"].count("full_attention") == 1 and gemma["sliding_window"] == 512
    with pytest.raises(ConfigError, match="no model shape named 'llama-9b'"):
        shape_config("llama-9b")


@pytest.mark.parametrize("shape", ["qwen3-0.6b", "gemma-3-1b"])
def test_small_variant_loads_in_infer_and_transformers(shape, tmp_path):
    out = write_random_checkpoint(shape, tmp_path / shape, num_hidden_layers=1, vocab_size=640,
                                  hidden_size=64, intermediate_size=128, device="cpu")
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["vocab_size"] == 640
    llm = LLM(model=str(out), device="cpu", dtype="float32", max_model_len=64, cache={"num_blocks": 2})
    ours = llm.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.inference_mode():
        theirs = ref.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=4, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, 4:].tolist()
    assert ours[0].outputs[0].token_ids == theirs
    assert llm.tokenizer.vocab_size == 640  # the synthetic tokenizer covers the vocabulary
