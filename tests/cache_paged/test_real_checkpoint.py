"""A real checkpoint (SmolLM2-135M-Instruct, fp32): greedy outputs over chat prompts sharing a
system prompt are the same with the contiguous, paged and prefix backends, and with the prefix
cache cold or warm."""

from __future__ import annotations

import pytest

from infer_core import LLM, SamplingParams
from infer_core.testing import fixtures

pytestmark = pytest.mark.slow

SYSTEM = ("You are a careful assistant for a small bakery. Answer in one short sentence, "
          "mention prices in euros, and never invent opening hours.")
QUESTIONS = ["How much is a croissant?", "Can I order a birthday cake for Saturday?", "Hi"]
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def checkpoint():
    return fixtures.smollm2_135m_instruct()


def generate(checkpoint, backend: str, repeats: int = 1) -> tuple[list[list[list[int]]], LLM]:
    llm = LLM(model=str(checkpoint), max_model_len=128, device="cpu", dtype="float32",
              max_num_seqs=8, max_num_batched_tokens=512,
              cache={"backend": backend, "num_blocks": 32 if backend != "contiguous" else 4})
    conversations = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
                     for q in QUESTIONS]
    runs = [[o.outputs[0].token_ids for o in llm.chat(conversations, GREEDY)] for _ in range(repeats)]
    return runs, llm


def test_backends_agree_on_a_real_checkpoint(checkpoint):
    [reference], _ = generate(checkpoint, "contiguous")
    [paged], _ = generate(checkpoint, "paged")
    assert paged == reference
    (cold, warm), llm = generate(checkpoint, "prefix", repeats=2)
    assert cold == reference and warm == reference
    stats = llm.engine.metrics.stats
    assert stats.prefix_cache_hits > stats.prefix_cache_queries / 2
    assert llm.engine.cache.audit([]) == {}
    assert llm.engine.cache.num_free_blocks == llm.engine.cache.num_blocks
