"""LlamaForCausalLM against transformers (see tests/models/parity.py), with and without
``llama3`` RoPE scaling, and its plugin spec."""

from __future__ import annotations

import pytest

from infer_core.testing import ArchitectureConformance
from tests.models.parity import TINY, ParityTests

LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=500_000.0, factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=32)


class TestLlamaParity(ParityTests):
    model_class = "LlamaForCausalLM"
    config_class = "LlamaConfig"
    config = dict(TINY, num_hidden_layers=3, vocab_size=256, rope_theta=10_000.0,
                  tie_word_embeddings=False)
    bf16_tolerance = 0.1
    hub_configs = ({"rope_parameters": None, "rope_theta": 10_000.0},)


class TestLlama3RopeScalingParity(ParityTests):
    """original_max_position_embeddings 32 puts the RoPE frequencies in all three llama3
    bands (kept, smoothed, divided by ``factor``) at head_dim 16."""

    model_class = "LlamaForCausalLM"
    config_class = "LlamaConfig"
    config = dict(TINY, num_hidden_layers=3, vocab_size=256, tie_word_embeddings=True,
                  rope_parameters=LLAMA3_ROPE)
    bf16_tolerance = 0.1
    hub_configs = (
        {"rope_parameters": None, "rope_theta": LLAMA3_ROPE["rope_theta"],
         "rope_scaling": {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}},
    )


class TestLlamaConformance(ArchitectureConformance):
    name = "LlamaForCausalLM"

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint_dir(cls, tmp_path_factory: pytest.TempPathFactory):
        return TestLlamaParity.save_checkpoint(tmp_path_factory)
