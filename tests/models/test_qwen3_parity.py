"""Qwen3ForCausalLM against transformers (see tests/models/parity.py), with and without
sliding-window layers, and its plugin spec."""

from __future__ import annotations

import pytest

from infer_core.testing import ArchitectureConformance
from tests.models.parity import TINY, ParityTests


class TestQwen3Parity(ParityTests):
    model_class = "Qwen3ForCausalLM"
    config_class = "Qwen3Config"
    config = dict(TINY, num_hidden_layers=3, vocab_size=384, rope_theta=1_000_000.0,
                  tie_word_embeddings=True)
    bf16_tolerance = 0.12
    hub_configs = ({"rope_parameters": None, "layer_types": None, "rope_theta": 1_000_000.0},)


class TestQwen3SlidingWindowParity(ParityTests):
    """``use_sliding_window``: the layers from ``max_window_layers`` on see 16 tokens."""

    model_class = "Qwen3ForCausalLM"
    config_class = "Qwen3Config"
    config = dict(TestQwen3Parity.config, use_sliding_window=True, sliding_window=16,
                  max_window_layers=1)
    bf16_tolerance = 0.12
    hub_configs = ({"layer_types": None},)


class TestQwen3Conformance(ArchitectureConformance):
    name = "Qwen3ForCausalLM"

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint_dir(cls, tmp_path_factory: pytest.TempPathFactory):
        return TestQwen3Parity.save_checkpoint(tmp_path_factory)
