"""Parity against transformers, shared by the per-architecture test modules.

A test module subclasses :class:`ParityTests` with a transformers model class and a tiny
config. The suite saves a seeded random checkpoint with ``save_pretrained`` (a real Hugging
Face directory), loads it into transformers (the oracle, eager attention) and into infer
(through the architecture registry), and checks, on prompts of different lengths run
together as one flat batch:

- every decoder layer's output and the logits, float32, within ``FP32_TOLERANCE``;
- chunked prefill == unchunked, and a request alone == the same request in a batch;
- greedy continuations == ``generate(do_sample=False)``;
- the Hub's config.json style (``rope_theta``/``rope_scaling``, no ``layer_types``) loads the
  same model as the transformers 5 style that ``save_pretrained`` writes;
- bfloat16 logits within the class's measured ``bf16_tolerance`` (the value is printed).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from infer_core.models.base import CausalLM
from infer_core.testing.runner import PromptRunner, load_for_test

transformers = pytest.importorskip("transformers")

MAX_MODEL_LEN = 128
FP32_TOLERANCE = 1e-4
EQUIVALENCE_TOLERANCE = 1e-5
CHUNK_SIZE = 7
NEW_TOKENS = 16

# Shared by the three tiny configs: 4 query heads over 2 KV heads of 16 dims.
TINY = dict(
    hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, max_position_embeddings=MAX_MODEL_LEN,
    # Larger than the 0.02 default, so that attention scores are far from uniform and a
    # wrong position, mask or scale shows in the outputs.
    initializer_range=0.1,
)


def save_tiny_checkpoint(model_class: str, config: Any, path: Path, seed: int = 0) -> Path:
    """A seeded random ``model_class(config)`` saved with ``save_pretrained`` into ``path``.
    Norm weights are randomized too (transformers initializes them to 1, or 0 for Gemma's
    ``1 + w``), so that a norm applied with the wrong weight or formula shows."""
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(path)
    return path


@contextmanager
def capture_outputs(modules: Sequence[nn.Module]) -> Iterator[list[list[torch.Tensor]]]:
    """Per module, the output of each call while the context is open (forward hooks). A
    decoder layer of ours returns ``(out, residual)`` (the next norm adds them): its hidden
    state is the sum; a transformers layer returns the hidden state (first in a tuple)."""
    records: list[list[torch.Tensor]] = [[] for _ in modules]

    def hook(index: int):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, tuple) and type(module).__module__.startswith("infer_models_"):
                out = output[0] + output[1]
            else:
                out = output[0] if isinstance(output, tuple) else output
            records[index].append(out.detach().float().clone())

        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def with_config(checkpoint: Path, path: Path, edit: dict[str, Any]) -> Path:
    """A copy of ``checkpoint`` in ``path`` whose ``config.json`` has the keys of ``edit`` set
    (or removed, where the value is ``None``): to check that configs written the way the Hub's
    checkpoints are (before transformers 5) load the same model."""
    shutil.copytree(checkpoint, path)
    config = json.loads((path / "config.json").read_text())
    config.update(edit)
    config = {k: v for k, v in config.items() if v is not None}
    (path / "config.json").write_text(json.dumps(config))
    return path


def max_error(ours: Sequence[torch.Tensor], theirs: Sequence[torch.Tensor]) -> float:
    assert len(ours) == len(theirs)
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(ours, theirs, strict=True))


class ParityTests:
    """Subclass (named ``Test...``) and set the class attributes below."""

    model_class: ClassVar[str]
    """The transformers class, which is also the architecture name in ``config.json``."""
    config_class: ClassVar[str]
    config: ClassVar[dict[str, Any]]
    """Keyword arguments of ``config_class``."""
    prompt_lengths: ClassVar[tuple[int, ...]] = (1, 9, 33, 80)
    bf16_tolerance: ClassVar[float]
    """Max abs logit error of bfloat16 infer vs bfloat16 transformers allowed (measured, with margin)."""
    hub_configs: ClassVar[tuple[dict[str, Any], ...]] = ()
    """Edits of the saved ``config.json`` into the Hub's (pre-transformers-5) style, each of
    which must load the same model (see :func:`with_config`)."""

    @classmethod
    def save_checkpoint(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        config = getattr(transformers, cls.config_class)(**cls.config)
        return save_tiny_checkpoint(cls.model_class, config, tmp_path_factory.mktemp(cls.__name__))

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return cls.save_checkpoint(tmp_path_factory)

    @pytest.fixture(scope="class")
    @classmethod
    def hf_model(cls, checkpoint: Path) -> nn.Module:
        return cls.load_hf(checkpoint, torch.float32)

    @pytest.fixture(scope="class")
    @classmethod
    def ours(cls, checkpoint: Path) -> CausalLM:
        return load_for_test(checkpoint, max_model_len=MAX_MODEL_LEN)

    @pytest.fixture(scope="class")
    @classmethod
    def prompts(cls) -> list[list[int]]:
        gen = torch.Generator().manual_seed(1)
        vocab = cls.config["vocab_size"]
        return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in cls.prompt_lengths]

    @classmethod
    def load_hf(cls, checkpoint: Path, dtype: torch.dtype) -> nn.Module:
        model = getattr(transformers, cls.model_class).from_pretrained(
            checkpoint, dtype=dtype, attn_implementation="eager"
        )
        model.generation_config.eos_token_id = None  # always generate NEW_TOKENS tokens
        return model.eval()

    @staticmethod
    def runner(model: CausalLM, num_requests: int) -> PromptRunner:
        return PromptRunner(model, max_model_len=MAX_MODEL_LEN, num_blocks=num_requests)

    @staticmethod
    @torch.inference_mode()
    def hf_logits(model: nn.Module, prompts: list[list[int]]) -> list[torch.Tensor]:
        return [model(torch.tensor([p])).logits[0] for p in prompts]

    def test_every_layer_and_the_logits_match_transformers(self, ours, hf_model, prompts):
        with capture_outputs(ours.model.layers) as ours_layers:
            logits = self.runner(ours, len(prompts)).prompt_logits(prompts)
        with capture_outputs(hf_model.model.layers) as hf_layers:
            hf_logits = self.hf_logits(hf_model, prompts)
        # One flat batch: each of our layers ran once over all prompts' tokens.
        assert all(len(calls) == 1 for calls in ours_layers)
        errors = []
        for ours_calls, hf_calls in zip(ours_layers, hf_layers, strict=True):
            per_prompt = ours_calls[0].split(list(self.prompt_lengths))
            errors.append(max_error(per_prompt, [h[0] for h in hf_calls]))
        logit_error = max_error(logits, hf_logits)
        print(f"{self.model_class} fp32: max abs error per layer {[f'{e:.1e}' for e in errors]}, "
              f"logits {logit_error:.1e}")
        assert max(errors) <= FP32_TOLERANCE
        assert logit_error <= FP32_TOLERANCE

    def test_chunked_prefill_matches_unchunked(self, ours, prompts):
        whole = self.runner(ours, len(prompts)).prompt_logits(prompts)
        chunked = self.runner(ours, len(prompts)).prompt_logits(prompts, chunk_size=CHUNK_SIZE)
        assert max_error(chunked, whole) <= EQUIVALENCE_TOLERANCE

    def test_a_request_alone_matches_it_in_a_batch(self, ours, prompts):
        batched = self.runner(ours, len(prompts)).prompt_logits(prompts)
        alone = [self.runner(ours, 1).prompt_logits([p])[0] for p in prompts]
        assert max_error(alone, batched) <= EQUIVALENCE_TOLERANCE

    def test_hub_style_configs_load_the_same_model(self, checkpoint, ours, prompts, tmp_path):
        assert self.hub_configs, "declare the Hub-style configs of this architecture"
        expected = self.runner(ours, len(prompts)).prompt_logits(prompts)
        for i, edit in enumerate(self.hub_configs):
            model = load_for_test(with_config(checkpoint, tmp_path / str(i), edit), max_model_len=MAX_MODEL_LEN)
            logits = self.runner(model, len(prompts)).prompt_logits(prompts)
            assert all(torch.equal(a, b) for a, b in zip(logits, expected, strict=True)), edit

    def test_greedy_matches_generate(self, ours, hf_model, prompts):
        ours_tokens = self.runner(ours, len(prompts)).greedy(prompts, NEW_TOKENS)
        for prompt, tokens in zip(prompts, ours_tokens, strict=True):
            ids = torch.tensor([prompt])
            # An explicit mask: generate() would otherwise mask every token equal to pad_token_id.
            out = hf_model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False
            )
            assert tokens == out[0, len(prompt):].tolist()

    def test_bf16_logits_error_is_bounded(self, checkpoint, hf_model, prompts):
        ours = load_for_test(checkpoint, max_model_len=MAX_MODEL_LEN, dtype=torch.bfloat16)
        logits = self.runner(ours, len(prompts)).prompt_logits(prompts)
        hf_logits = self.hf_logits(self.load_hf(checkpoint, torch.bfloat16), prompts)
        fp32_logits = self.hf_logits(hf_model, prompts)
        error = max_error(logits, hf_logits)
        # For scale: how far each bfloat16 model is from the float32 one.
        print(f"{self.model_class} bf16: max abs logit error vs transformers bf16 {error:.3g} "
              f"(tolerance {self.bf16_tolerance}); vs fp32: infer {max_error(logits, fp32_logits):.3g}, "
              f"transformers {max_error(hf_logits, fp32_logits):.3g}; "
              f"max |logit| {max(float(x.abs().max()) for x in fp32_logits):.3g}")
        assert error <= self.bf16_tolerance
