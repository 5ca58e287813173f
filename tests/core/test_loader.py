"""The checkpoint loader: safetensors (single and sharded), weight maps, errors, RoPE styles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from infer_core.errors import ConfigError, ModelLoadError, UnknownNameError
from infer_core.layers.rotary import inv_frequencies
from infer_core.loader.hf_config import layer_types, rope_spec
from infer_core.loader.safetensors import checkpoint_files, iter_checkpoint
from infer_core.testing.runner import PromptRunner, load_for_test

transformers = pytest.importorskip("transformers")

TINY_LLAMA = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, vocab_size=128, max_position_embeddings=128,
    tie_word_embeddings=False,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY_LLAMA)).eval()
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sharded(checkpoint: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama-sharded")
    model = transformers.LlamaForCausalLM.from_pretrained(checkpoint)
    model.save_pretrained(path, max_shard_size="40KB")
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_sharded_and_single_file_load_the_same_model(checkpoint: Path, sharded: Path):
    assert len(checkpoint_files(sharded)) > 2
    assert (sharded / "model.safetensors.index.json").is_file()
    prompt = [[3, 14, 15, 92, 65, 35, 89, 79]]
    single = PromptRunner(load_for_test(checkpoint, max_model_len=64), max_model_len=64, num_blocks=2)
    shards = PromptRunner(load_for_test(sharded, max_model_len=64), max_model_len=64, num_blocks=2)
    assert torch.equal(single.prompt_logits(prompt)[0], shards.prompt_logits(prompt)[0])


def test_tensors_are_cast_to_the_configured_dtype(checkpoint: Path):
    tensors = dict(iter_checkpoint(checkpoint, torch.bfloat16))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    model = load_for_test(checkpoint, dtype=torch.bfloat16, max_model_len=64)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_missing_tensor_is_named(checkpoint: Path, tmp_path: Path):
    broken = _copy(checkpoint, tmp_path / "m")
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    del tensors["model.norm.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError) as e:
        load_for_test(broken, max_model_len=64)
    assert str(e.value) == (
        f"checkpoint '{broken}' is missing tensors LlamaForCausalLM needs: "
        "model.layers.1.self_attn.qkv_proj.weight[1], model.norm.weight."
    )


def test_unexpected_tensor_is_named(checkpoint: Path, tmp_path: Path):
    broken = _copy(checkpoint, tmp_path / "m")
    tensors = load_file(broken / "model.safetensors")
    tensors["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError) as e:
        load_for_test(broken, max_model_len=64)
    assert str(e.value) == (
        f"checkpoint '{broken}' has tensors LlamaForCausalLM does not use: "
        "model.layers.0.mlp.extra_proj.weight. Check that config.json's architecture matches "
        "the weights."
    )


def test_shape_mismatch_is_named(checkpoint: Path, tmp_path: Path):
    broken = _copy(checkpoint, tmp_path / "m")
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 48
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"tensor 'model.layers.0.mlp.down_proj.weight' has "
                       r"shape \[32, 64\] but the model expects \[32, 48\]"):
        load_for_test(broken, max_model_len=64)


def test_pickle_checkpoints_are_refused(checkpoint: Path, tmp_path: Path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(checkpoint / "config.json", pickled)
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as e:
        load_for_test(pickled, max_model_len=64)
    assert str(e.value).startswith(
        f"'{pickled}' holds only pickle checkpoints (pytorch_model.bin), which infer refuses to "
        "load because unpickling can run arbitrary code;"
    )


def test_missing_shard_listed_in_index(sharded: Path, tmp_path: Path):
    broken = _copy(sharded, tmp_path / "m")
    victim = checkpoint_files(broken)[-1]
    victim.unlink()
    with pytest.raises(ModelLoadError, match=f"lists shards that are not there: {victim.name}"):
        load_for_test(broken, max_model_len=64)


def test_unknown_architecture_says_what_is_installed(checkpoint: Path, tmp_path: Path):
    other = _copy(checkpoint, tmp_path / "m")
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnknownNameError, match=r"^no architecture named 'MistralForCausalLM' "
                       r"\(from architectures in .*config.json\)\. Installed: "):
        load_for_test(other, max_model_len=64)


def test_directory_without_config(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"is not a Hugging Face model directory: it has no config\.json"):
        load_for_test(tmp_path, max_model_len=64)


# -- RoPE config styles ------------------------------------------------------------------------

LLAMA3_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def test_hub_and_transformers5_rope_styles_agree():
    hub = {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", **LLAMA3_SCALING}}
    hub_old_key = {"rope_theta": 500000.0, "rope_scaling": {"type": "llama3", **LLAMA3_SCALING}}
    saved = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **LLAMA3_SCALING}}
    assert rope_spec(hub) == rope_spec(saved) == rope_spec(hub_old_key)
    assert rope_spec(saved).rope_type == "llama3"


def test_llama3_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(
        head_dim=64, hidden_size=256, num_attention_heads=4, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", **LLAMA3_SCALING},
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    ours = inv_frequencies(rope_spec(config.to_dict()), 64)
    assert torch.allclose(ours, expected, rtol=1e-6, atol=0)


def test_gemma3_rope_per_layer_type_in_both_styles():
    saved = {"num_hidden_layers": 6, "sliding_window": 512,
             "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
             "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                 "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                    "rope_theta": 1000000.0}}}
    hub = {"num_hidden_layers": 6, "sliding_window": 512, "sliding_window_pattern": 6,
           "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
           "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    for cfg in (saved, hub):
        assert layer_types(cfg) == ["sliding_attention"] * 5 + ["full_attention"]
        assert rope_spec(cfg, "sliding_attention").theta == 10000.0
        assert rope_spec(cfg, "sliding_attention").rope_type == "default"
        assert rope_spec(cfg, "full_attention").theta == 1000000.0
        assert rope_spec(cfg, "full_attention").factor == 8.0


def test_unsupported_rope_type_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"RoPE type 'yarn' is not supported \(supported: default, linear, llama3\)"):
        rope_spec({"rope_theta": 1.0, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
