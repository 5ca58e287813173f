"""The ``triton`` attention backend passes the attention-backend conformance suite under the
Triton interpreter (fp32; with and without forced split-KV; FP8 caches); in the engine, the
models' RoPE kernels write K/V for it and it only attends (``supports_fused_kv_write``)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.attention import triton as triton_backend
from infer_core.attention.torch import TorchAttentionBackend
from infer_core.attention.triton import TritonAttentionBackend
from infer_core.engine.llm_engine import LLMEngine
from infer_core.layers.attention import Attention
from infer_core.layers.rotary import RotaryEmbedding
from infer_core.testing import AttentionBackendConformance
from infer_core.testing.fixtures import tiny_checkpoint


class TestTritonAttentionConformance(AttentionBackendConformance):
    name = "triton"
    max_examples = 12


class TestTritonAttentionSplitKV(AttentionBackendConformance):
    name = "triton"
    options = {"kv_splits": 3}
    max_examples = 6


def _generate(checkpoint: str, prompts: list[list[int]]) -> tuple[type, list]:
    """The engine's attention-backend class and the outputs of greedy requests (a prefill step,
    then decodes)."""
    llm = LLM(model=checkpoint, device="cpu", dtype="float32", max_model_len=64,
              cache={"num_blocks": 16, "block_size": 16})
    backends = {type(m.backend) for m in llm.engine.model.modules() if isinstance(m, Attention)}
    assert len(backends) == 1
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=1)
    return backends.pop(), [o.outputs[0] for o in llm.generate(prompts, params)]


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_rope_kernel_writes_kv_for_the_triton_backend(arch, monkeypatch):
    """With the RoPE kernels on (``RotaryEmbedding.kernel_devices`` extended to the CPU, where
    the interpreter runs them), the ``triton`` backend (``supports_fused_kv_write``) never runs
    its own KV write — ``write_kv`` raises — and only ``attend``s, through prefill and decode
    steps, with the tokens (and logprobs) of the ``torch`` backend on the plain CPU path; the
    ``torch`` backend, which does not declare the flag, still gets ``forward(q, k, v, ...)``
    and gives the same tokens too."""
    checkpoint = str(tiny_checkpoint(arch, tokenizer=True, vocab_size=512))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (n,), generator=gen).tolist() for n in (3, 20, 7)]
    backend, expected = _generate(checkpoint, prompts)
    assert backend is TorchAttentionBackend

    monkeypatch.setattr(RotaryEmbedding, "kernel_devices", frozenset({"cuda", "cpu"}))
    calls = Counter()

    def counting(cls, method):
        original = getattr(cls, method)

        def wrapper(self, *args, **kwargs):
            calls[cls.__name__, method] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, wrapper)

    def no_separate_write(*args, **kwargs):
        raise AssertionError("the triton backend wrote K/V itself: the fused write was not taken")

    counting(TritonAttentionBackend, "attend")
    counting(TorchAttentionBackend, "forward")
    monkeypatch.setattr(triton_backend, "write_kv", no_separate_write)
    monkeypatch.setattr(LLMEngine, "_attention_name", lambda self, config, device: "triton")
    backend, fused = _generate(checkpoint, prompts)
    assert backend is TritonAttentionBackend
    monkeypatch.setattr(LLMEngine, "_attention_name", lambda self, config, device: "torch")
    backend, unfused = _generate(checkpoint, prompts)
    assert backend is TorchAttentionBackend
    # 5 steps (one prefill, four decodes) through every layer, for each backend
    assert calls["TritonAttentionBackend", "attend"] >= 5
    assert calls["TorchAttentionBackend", "forward"] >= 5
    for result in (fused, unfused):
        for got, want in zip(result, expected, strict=True):
            assert got.token_ids == want.token_ids
            for a, b in zip(got.logprobs, want.logprobs, strict=True):
                assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
