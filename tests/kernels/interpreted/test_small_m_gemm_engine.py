"""``model.small_m_gemm``: with the small-M GEMM routing the one-row inputs of the linear
layers (batch-1 decode steps), and with ``model.small_m_prologues`` ("act", "all") folding the RMSNorm before
qkv / gate-up and the gated activation before down into its prologue, or with
``model.small_m_gated_epilogue`` the gated activation after gate-up into its epilogue (alone,
with the norm prologue, and winning over the act prologue), the engine gives the tokens it
gives without it (fp32, Triton interpreter), for each architecture, for a request alone and
for a batch; the kernel variants each mode should take are counted."""

from __future__ import annotations

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.kernels import small_m_gemm as kernel_module
from infer_core.layers.linear import Linear
from infer_core.testing.fixtures import tiny_checkpoint

# mode: (small_m_gemm, small_m_prologues, small_m_gated_epilogue)
MODES = {"cublas": (False, "none", False), "small_m": (True, "none", False), "act": (True, "act", False),
         "all": (True, "all", False), "epilogue": (True, "none", True), "norm+epilogue": (True, "norm", True),
         "all+epilogue": (True, "all", True)}
PROLOGUE_MODES = ["small_m", "act", "all"]
EPILOGUE_MODES = ["epilogue", "norm+epilogue", "all+epilogue"]  # a test of their own: ~25 s for gemma3
EXPECTED_CALLS = {"cublas": set(), "small_m": {"plain"}, "act": {"plain", "silu", "gelu_tanh"},
                  "all": {"norm", "silu", "gelu_tanh", "plain"}, "epilogue": {"plain", "gated"},
                  "norm+epilogue": {"norm", "norm+gated", "plain"},
                  "all+epilogue": {"norm", "norm+gated", "plain"}}  # the epilogue wins: down runs plain
ACTIVATION = {"llama": "silu", "qwen3": "silu", "gemma3": "gelu_tanh"}


def label(kwargs) -> str:
    """The kernel variant of one ``small_m_gemm`` call: its prologue and epilogue, or plain."""
    parts = ["norm"] * (kwargs.get("norm") is not None) + [kwargs.get("act_and_mul")] * bool(kwargs.get("act_and_mul"))
    parts += ["gated"] * bool(kwargs.get("gated"))
    return "+".join(parts) or "plain"


ARCHS = ["llama", "qwen3", "gemma3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_small_m_gemm_equals_cublas_path(arch, monkeypatch):
    check_modes(arch, PROLOGUE_MODES, monkeypatch)


@pytest.mark.parametrize("arch", ARCHS)
def test_gated_epilogue_equals_cublas_path(arch, monkeypatch):
    check_modes(arch, EPILOGUE_MODES, monkeypatch)


def check_modes(arch: str, modes: list[str], monkeypatch) -> None:
    """Greedy tokens and logprobs of each of ``modes`` against the cuBLAS path, and the kernel
    variants each mode took in the batch-1 decode steps."""
    checkpoint = str(tiny_checkpoint(arch, tokenizer=True, vocab_size=512))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (n,), generator=gen).tolist() for n in (3, 20, 7)]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=1)
    calls: list[str] = []
    gated: set[str] = set()
    original = kernel_module.small_m_gemm

    def counted(x, weight, **kwargs):
        calls.append(label(kwargs))
        gated.update([kwargs["gated"]] if kwargs.get("gated") else [])
        return original(x, weight, **kwargs)

    monkeypatch.setattr(kernel_module, "small_m_gemm", counted)
    results = {}
    for mode in ["cublas", *modes]:
        on, prologues, epilogue = MODES[mode]
        llm = LLM(model=checkpoint, device="cpu", dtype="float32", max_model_len=64, small_m_gemm=on,
                  small_m_prologues=prologues, small_m_gated_epilogue=epilogue,
                  cache={"num_blocks": 16, "block_size": 16})
        switched = [(m.small_m, m.norm_prologue, m.act_prologue, m.gated_epilogue) for m in llm.engine.model.modules()
                    if isinstance(m, Linear)]
        want = (on, prologues in ("norm", "all"), prologues in ("act", "all"), epilogue)
        assert switched and all(s == want for s in switched) if on else not any(s[0] for s in switched)
        calls.clear()
        gated.clear()
        alone = [llm.generate([p], params)[0].outputs[0] for p in prompts[:2]]  # batch-1 decode
        # 4 decode steps at one row per request alone (the prefill and the batch take cuBLAS)
        per_layer = len(llm.engine.model.model.layers) * 2 * 4
        expected = EXPECTED_CALLS[mode]
        assert set(calls) <= expected and (not expected or calls)
        if mode == "all":  # per layer: qkv and gate/up with the norm, down with the activation
            assert calls.count("norm") == 2 * per_layer
        if mode in ("act", "all"):
            assert len(calls) - calls.count("norm") - calls.count("plain") == per_layer
        if mode in EPILOGUE_MODES:  # per layer: gate/up with the activation (and the norm), down plain
            assert calls.count("gated") + calls.count("norm+gated") == per_layer
            assert calls.count("plain") == (3 if mode == "epilogue" else 2) * per_layer  # (qkv,) o, down
            assert gated == {ACTIVATION[arch]}
        results[mode] = alone + [o.outputs[0] for o in llm.generate(prompts, params)]
    for mode in modes:
        for got, want in zip(results[mode], results["cublas"], strict=True):
            assert got.token_ids == want.token_ids, mode
            for a, b in zip(got.logprobs, want.logprobs, strict=True):
                assert a.logprob == pytest.approx(b.logprob, abs=1e-4), mode
