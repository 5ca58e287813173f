"""The backends in the engine on tiny checkpoints (fp32, CPU, greedy): paged == contiguous,
prefix on == off over shared system prompts (hits in the same step included), a whole-prompt
hit recomputes its last token, preempted == not preempted with paged blocks, cache salts keep
tenants apart, counters reach the engine's metrics, and every block returns to the pool."""

from __future__ import annotations

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.errors import RequestError
from infer_core.testing.fixtures import tiny_checkpoint

MAX_LEN = 128
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def workload(vocab: int = 512) -> list[list[int]]:
    """Two system prompts (one block-aligned) shared by several requests, plus loners."""
    gen = torch.Generator().manual_seed(0)

    def rand(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=gen).tolist()

    system_a, system_b = rand(32), rand(21)
    return [system_a + rand(5), system_a + rand(17), system_a, system_b + rand(1), rand(9),
            system_b + rand(30), system_a + rand(5), rand(40)]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def checkpoint(request):
    return tiny_checkpoint(request.param, tokenizer=True, vocab_size=512)


def make_llm(checkpoint, backend: str, **cache) -> LLM:
    return LLM(model=str(checkpoint), max_model_len=MAX_LEN, device="cpu", max_num_seqs=8,
               max_num_batched_tokens=256, cache={"backend": backend, "num_blocks": 32, "block_size": 8, **cache})


def tokens(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def assert_pool_whole(llm: LLM) -> None:
    cache = llm.engine.cache
    assert cache.audit([]) == {}
    assert cache.num_free_blocks == cache.num_blocks  # cached-free blocks count as free


@pytest.fixture(scope="module")
def reference(checkpoint) -> list[list[int]]:
    return tokens(make_llm(checkpoint, "contiguous", num_blocks=4).generate(workload(), GREEDY))


def test_paged_equals_contiguous(checkpoint, reference):
    llm = make_llm(checkpoint, "paged")
    assert tokens(llm.generate(workload(), GREEDY)) == reference
    assert_pool_whole(llm)


def test_prefix_on_equals_off_and_hits_shared_prompts(checkpoint, reference):
    llm = make_llm(checkpoint, "prefix")
    assert tokens(llm.generate(workload(), GREEDY)) == reference  # hits within one step
    stats = llm.engine.metrics.stats
    assert stats.prefix_cache_hits >= 32 + 24 + 32 + 16  # system_a x3 (one whole), system_b x1
    assert_pool_whole(llm)
    first_queries = stats.prefix_cache_queries
    assert tokens(llm.generate(workload(), GREEDY)) == reference  # now from the cache
    assert stats.prefix_cache_hits > 0.7 * (stats.prefix_cache_queries - first_queries)
    for i in (0, 2, 5):  # alone, from the cache
        assert tokens(llm.generate([workload()[i]], GREEDY))[0] == reference[i]
    assert_pool_whole(llm)


def test_whole_prompt_hit_recomputes_the_last_token(checkpoint, reference):
    llm = make_llm(checkpoint, "prefix")
    prompt = workload()[2]  # 32 tokens: 4 full blocks of 8
    assert tokens(llm.generate([prompt], GREEDY))[0] == reference[2]
    cache = llm.engine.cache
    assert cache.get_computed_blocks(llm.engine.make_request(prompt))[1] == 24  # last block recomputed
    before = cache.prefix_cache_stats.hits
    assert tokens(llm.generate([prompt], GREEDY))[0] == reference[2]
    assert cache.prefix_cache_stats.hits - before == 24
    assert llm.engine.reset_prefix_cache() is True
    assert cache.get_computed_blocks(llm.engine.make_request(prompt))[1] == 0


@pytest.mark.parametrize("backend", ["paged", "prefix"])
def test_preempted_equals_not_preempted(checkpoint, reference, backend):
    llm = make_llm(checkpoint, backend, num_blocks=MAX_LEN // 8)  # room for one long request
    assert tokens(llm.generate(workload(), GREEDY)) == reference
    assert llm.engine.scheduler.num_preemptions > 0
    assert_pool_whole(llm)


def test_abort_returns_blocks(checkpoint):
    llm = make_llm(checkpoint, "prefix")
    engine = llm.engine
    for prompt in workload()[:4]:
        engine.add_request(engine.make_request(prompt, SamplingParams(temperature=0, max_tokens=50)))
    engine.step()
    engine.step()
    for request_id in list(engine.scheduler.requests):
        engine.abort_request(request_id)
    assert_pool_whole(llm)


def test_cache_salt_separates_tenants(checkpoint, reference):
    llm = make_llm(checkpoint, "prefix")
    engine = llm.engine
    prompt = workload()[0]

    def run(salt: str | None) -> tuple[list[int], int]:
        before = engine.cache.prefix_cache_stats.hits
        engine.add_request(engine.make_request(prompt, GREEDY, cache_salt=salt))
        outputs = []
        while engine.has_unfinished_requests():
            outputs.extend(o for o in engine.step() if o.finished)
        return outputs[0].outputs[0].token_ids, engine.cache.prefix_cache_stats.hits - before

    assert run("alice") == (reference[0], 0)
    assert run("bob") == (reference[0], 0)  # same prompt, other tenant: nothing shared
    assert run(None) == (reference[0], 0)
    assert run("alice") == (reference[0], 32)
    with pytest.raises(RequestError, match="cache_salt must be a non-empty string, got ''"):
        engine.make_request(prompt, GREEDY, cache_salt="")
    assert_pool_whole(llm)
