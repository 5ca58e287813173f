"""Gemma3ForCausalLM (text) against transformers (see tests/models/parity.py), and its
plugin spec. Six layers: five sliding-window (window 16, local RoPE base) then one global
(its own RoPE base); the longest prompt (80 tokens) is five windows long."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from infer_core.testing import ArchitectureConformance
from infer_core.testing.runner import load_for_test
from tests.models.parity import MAX_MODEL_LEN, TINY, ParityTests

# The Hub's Gemma 3 configs: rope_theta, rope_local_base_freq, sliding_window_pattern; or
# none of them, which means transformers' defaults (1e6, 1e4, 6: those of the tiny config).
HUB_CONFIGS = (
    {"rope_parameters": None, "layer_types": None, "_sliding_window_pattern": None,
     "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "sliding_window_pattern": 6},
    {"rope_parameters": None, "layer_types": None, "_sliding_window_pattern": None},
)


class TestGemma3Parity(ParityTests):
    model_class = "Gemma3ForCausalLM"
    config_class = "Gemma3TextConfig"
    config = dict(
        TINY, num_hidden_layers=6, vocab_size=512, sliding_window=16, query_pre_attn_scalar=24,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        },
        tie_word_embeddings=True,
    )
    bf16_tolerance = 0.16
    hub_configs = HUB_CONFIGS

    @pytest.mark.parametrize("prefix", ["model.language_model.", "language_model.model."])
    def test_language_model_prefixes_load_the_same_model(self, checkpoint, ours, prompts, tmp_path, prefix):
        """The text weights as multimodal Gemma 3 checkpoints name them (transformers 5,
        and before)."""
        path = tmp_path / "renamed"
        shutil.copytree(checkpoint, path)
        tensors = load_file(path / "model.safetensors")
        renamed = {prefix + k.removeprefix("model."): v for k, v in tensors.items()}
        assert len(renamed) == len(tensors)
        save_file(renamed, path / "model.safetensors", metadata={"format": "pt"})
        model = load_for_test(path, max_model_len=MAX_MODEL_LEN)
        expected = self.runner(ours, len(prompts)).prompt_logits(prompts)
        got = self.runner(model, len(prompts)).prompt_logits(prompts)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


class TestGemma3SoftcapParity(ParityTests):
    """``final_logit_softcapping`` applies; ``attn_logit_softcapping`` does not, in
    transformers' Gemma 3 or here (see the model's docstring)."""

    model_class = "Gemma3ForCausalLM"
    config_class = "Gemma3TextConfig"
    config = dict(TestGemma3Parity.config, attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
    bf16_tolerance = 0.16
    hub_configs = HUB_CONFIGS


class TestGemma3Conformance(ArchitectureConformance):
    name = "Gemma3ForCausalLM"

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint_dir(cls, tmp_path_factory: pytest.TempPathFactory):
        return TestGemma3Parity.save_checkpoint(tmp_path_factory)
