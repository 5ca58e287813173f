"""``model.small_m_gemm``: with the small-M GEMM routing the one-row inputs of the linear
layers (batch-1 decode steps), and with ``model.small_m_prologues`` ("act", "all") folding the RMSNorm before
qkv / gate-up and the gated activation before down into its prologue, the engine gives the
tokens it gives without it (fp32, Triton interpreter), for each architecture, for a request
alone and for a batch."""

from __future__ import annotations

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.kernels import small_m_gemm as kernel_module
from infer_core.layers.linear import Linear
from infer_core.testing.fixtures import tiny_checkpoint

MODES = {"cublas": (False, "none"), "small_m": (True, "none"), "act": (True, "act"), "all": (True, "all")}
EXPECTED_CALLS = {"cublas": set(), "small_m": {"plain"}, "act": {"plain", "silu", "gelu_tanh"},
                  "all": {"norm", "silu", "gelu_tanh", "plain"}}


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_small_m_gemm_equals_cublas_path(arch, monkeypatch):
    checkpoint = str(tiny_checkpoint(arch, tokenizer=True, vocab_size=512))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (n,), generator=gen).tolist() for n in (3, 20, 7)]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=1)
    calls: list[str] = []
    original = kernel_module.small_m_gemm

    def counted(x, weight, **kwargs):
        calls.append("norm" if kwargs.get("norm") is not None else kwargs.get("act_and_mul") or "plain")
        return original(x, weight, **kwargs)

    monkeypatch.setattr(kernel_module, "small_m_gemm", counted)
    results = {}
    for mode, (on, prologues) in MODES.items():
        llm = LLM(model=checkpoint, device="cpu", dtype="float32", max_model_len=64, small_m_gemm=on,
                  small_m_prologues=prologues, cache={"num_blocks": 16, "block_size": 16})
        switched = [(m.small_m, m.norm_prologue, m.act_prologue) for m in llm.engine.model.modules()
                    if isinstance(m, Linear)]
        assert switched and all(s == (on, prologues == "all", prologues in ("act", "all")) for s in switched)
        calls.clear()
        alone = [llm.generate([p], params)[0].outputs[0] for p in prompts[:2]]  # batch-1 decode
        layers = len(llm.engine.model.model.layers)
        # 4 decode steps at one row per request alone (the prefill and the batch take cuBLAS)
        expected = EXPECTED_CALLS[mode]
        assert set(calls) <= expected and (not expected or calls)
        if mode == "all":  # per layer: qkv and gate/up with the norm, down with the activation
            assert calls.count("norm") == 2 * layers * 2 * 4
        if mode in ("act", "all"):
            assert len(calls) - calls.count("norm") - calls.count("plain") == layers * 2 * 4
        results[mode] = alone + [o.outputs[0] for o in llm.generate(prompts, params)]
    for mode in ("small_m", "act", "all"):
        for got, want in zip(results[mode], results["cublas"], strict=True):
            assert got.token_ids == want.token_ids, mode
            for a, b in zip(got.logprobs, want.logprobs, strict=True):
                assert a.logprob == pytest.approx(b.logprob, abs=1e-4), mode
