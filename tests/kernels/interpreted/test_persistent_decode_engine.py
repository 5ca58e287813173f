"""``model.persistent_decode``: Llama and Qwen 3 batch-1 decode steps through the persistent
decode-layer kernel (stage by stage under the Triton interpreter, fp32) give the tokens and
logprobs of the usual path, alone and in a batch (which keeps the usual path); each decode
step of a request alone runs six launches per layer (stage by stage); a stack the kernel cannot
take (head dim 16, Gemma 3) keeps the usual path with a log line."""

from __future__ import annotations

import logging

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.layers import persistent_decode as module
from infer_core.testing.fixtures import tiny_checkpoint

CASES = {  # arch, checkpoint overrides, whether the kernel takes the stack
    "llama": ("llama", dict(head_dim=32), True),
    "qwen3": ("qwen3", {}, True),
    "llama-head-dim-16": ("llama", {}, False),
    "gemma3": ("gemma3", {}, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_persistent_decode_equals_usual_path(case, monkeypatch, caplog):
    arch, overrides, takes = CASES[case]
    checkpoint = str(tiny_checkpoint(arch, tokenizer=True, vocab_size=512, **overrides))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (n,), generator=gen).tolist() for n in (3, 20, 7)]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=1)
    calls = []
    original = module.decode_layer

    def counted(*args, **kwargs):
        calls.append(kwargs.get("stage_by_stage"))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "decode_layer", counted)
    results = {}
    for on in (False, True):
        llm = LLM(model=checkpoint, device="cpu", dtype="float32", max_model_len=64, persistent_decode=on,
                  cache={"num_blocks": 16, "block_size": 16})
        calls.clear()
        with caplog.at_level(logging.WARNING):
            alone = [llm.generate([p], params)[0].outputs[0] for p in prompts[:2]]
        layers = len(llm.engine.model.model.layers)
        # a request alone: 4 decode steps after its prefill, one launch per layer each
        assert len(calls) == (2 * 4 * layers if on and takes else 0), (on, takes, len(calls))
        assert all(staged is True for staged in calls)  # the interpreter runs it stage by stage
        if on and takes:
            assert llm.engine.model.model.persistent_decode.launches_per_step == 6 * layers
        if on and not takes:
            assert "model.persistent_decode" in caplog.text
        assert llm.engine.model.model.persistent_decode.active == (on and takes) if arch != "gemma3" else True
        calls.clear()
        batched = [o.outputs[0] for o in llm.generate(prompts, params)]
        results[on] = alone + batched
    for got, want in zip(results[True], results[False], strict=True):
        assert got.token_ids == want.token_ids
        for a, b in zip(got.logprobs, want.logprobs, strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_persistent_decode_needs_cuda_outside_the_interpreter(monkeypatch):
    from infer_core.errors import ConfigError

    monkeypatch.delenv("TRITON_INTERPRET")
    checkpoint = str(tiny_checkpoint("qwen3", tokenizer=True, vocab_size=512))
    with pytest.raises(ConfigError, match="persistent_decode runs a Triton kernel and needs a CUDA device"):
        LLM(model=checkpoint, device="cpu", dtype="float32", max_model_len=64, persistent_decode=True,
            cache={"num_blocks": 16, "block_size": 16})
    unset = LLM(model=checkpoint, device="cpu", dtype="float32", max_model_len=64,
                cache={"num_blocks": 16, "block_size": 16})
    assert not unset.engine.model.model.persistent_decode.enabled  # on by default only with CUDA
