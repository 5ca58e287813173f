"""``model.small_m_gemm``: with the small-M GEMM routing the one-row inputs of the linear
layers (batch-1 decode steps), the engine gives the tokens it gives without it (fp32, Triton
interpreter), for each architecture, for a request alone and for a batch."""

from __future__ import annotations

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.layers.linear import Linear
from infer_core.testing.fixtures import tiny_checkpoint


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_small_m_gemm_equals_cublas_path(arch):
    checkpoint = str(tiny_checkpoint(arch, tokenizer=True, vocab_size=512))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (n,), generator=gen).tolist() for n in (3, 20, 7)]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=1)
    results = {}
    for on in (False, True):
        llm = LLM(model=checkpoint, device="cpu", dtype="float32", max_model_len=64, small_m_gemm=on,
                  cache={"num_blocks": 16, "block_size": 16})
        switched = [m.small_m for m in llm.engine.model.modules() if isinstance(m, Linear)]
        assert switched and all(s == on for s in switched)
        alone = [llm.generate([p], params)[0].outputs[0] for p in prompts[:2]]  # batch-1 decode
        results[on] = alone + [o.outputs[0] for o in llm.generate(prompts, params)]
    for off, on in zip(results[False], results[True], strict=True):
        assert on.token_ids == off.token_ids
        for a, b in zip(on.logprobs, off.logprobs, strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
