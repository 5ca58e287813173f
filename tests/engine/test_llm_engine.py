"""The engine end to end on tiny checkpoints (fp32, CPU): parity with transformers'
``generate``, and the equivalences every fast path must keep (batched == alone, chunked ==
unchunked, preempted == not preempted, seeded sampling independent of batch neighbours)."""

from __future__ import annotations

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.errors import ConfigError, RequestError
from infer_core.testing import caches
from infer_core.testing.fixtures import tiny_checkpoint

transformers = pytest.importorskip("transformers")

MAX_LEN = 160
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def prompts(vocab: int, n: int = 8, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = [1, 3, 17, 40, 64, 9, 100, 33][:n]
    return [torch.randint(0, vocab, (k,), generator=gen).tolist() for k in lengths]


@pytest.fixture(scope="module", params=["llama", "qwen3", "gemma3"])
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def checkpoint(arch: str):
    return tiny_checkpoint(arch, tokenizer=True, vocab_size=512)


def make_llm(checkpoint, **overrides) -> LLM:
    settings = dict(max_model_len=MAX_LEN, device="cpu", max_num_batched_tokens=512, max_num_seqs=16)
    cache = {"num_blocks": 16, "block_size": 16, **overrides.pop("cache", {})}
    settings.update(overrides, cache=cache)
    return LLM(model=str(checkpoint), plugins=[caches], **settings)


@pytest.fixture(scope="module")
def llm(checkpoint) -> LLM:
    return make_llm(checkpoint)


def tokens(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def test_greedy_matches_transformers_generate(llm, checkpoint):
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, attn_implementation="eager").eval()
    batch = prompts(512)
    ours = tokens(llm.generate(batch, GREEDY))
    for prompt, out in zip(batch, ours, strict=True):
        with torch.inference_mode():
            ref = ref_model.generate(
                torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0,
            )[0, len(prompt):].tolist()
        assert out == ref


def test_alone_equals_in_a_batch_of_eight(llm):
    batch = prompts(512)
    together = tokens(llm.generate(batch, GREEDY))
    for prompt, out in zip(batch, together, strict=True):
        assert tokens(llm.generate([prompt], GREEDY))[0] == out


def test_chunked_prefill_equals_unchunked(checkpoint, llm):
    batch = prompts(512)
    chunked = make_llm(checkpoint, prefill_chunk_size=16, max_num_batched_tokens=48)
    assert tokens(chunked.generate(batch, GREEDY)) == tokens(llm.generate(batch, GREEDY))


def test_preempted_equals_not_preempted(checkpoint, llm):
    batch = prompts(512)
    tight = make_llm(checkpoint, cache={"num_blocks": MAX_LEN // 16, "backend": "small_blocks"})  # one long request
    outs = tight.generate(batch, GREEDY)
    assert tight.engine.scheduler.num_preemptions > 0
    assert tokens(outs) == tokens(llm.generate(batch, GREEDY))
    assert tight.engine.cache.num_free_blocks == tight.engine.cache.num_blocks
    assert tight.engine.cache.audit([]) == {}


def test_seeded_sampling_is_reproducible_and_independent_of_neighbours(llm):
    batch = prompts(512)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    other = SamplingParams(temperature=1.3, max_tokens=20, ignore_eos=True)
    alone = tokens(llm.generate([batch[3]], seeded))[0]
    mixed = llm.generate(batch, [other, other, other, seeded, other, other, other, other])
    assert tokens(mixed)[3] == alone
    assert tokens(llm.generate([batch[3]], seeded))[0] == alone
    different = SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=16, ignore_eos=True)
    assert tokens(llm.generate([batch[3]], different))[0] != alone


def test_seeded_sampling_survives_preemption(checkpoint, llm):
    batch = prompts(512)
    seeded = [SamplingParams(temperature=1.0, seed=i, max_tokens=24, ignore_eos=True) for i in range(8)]
    tight = make_llm(checkpoint, cache={"num_blocks": MAX_LEN // 16, "backend": "small_blocks"})
    outs = tight.generate(batch, seeded)
    assert tight.engine.scheduler.num_preemptions > 0
    assert tokens(outs) == tokens(llm.generate(batch, seeded))


def test_max_tokens_and_finish_reasons(llm):
    out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 5
    assert out.finished and out.outputs[0].finish_reason == "length"


def test_output_never_passes_max_model_len(llm):
    prompt = [7] * (MAX_LEN - 4)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4
    assert out.outputs[0].finish_reason == "length"


def test_stop_token_ids_stop_generation(llm):
    free = tokens(llm.generate([[5, 6, 7]], GREEDY))[0]
    stop_at = free[3]
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True,
                                                   stop_token_ids=[stop_at]))[0].outputs[0]
    assert out.token_ids == free[: free.index(stop_at) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at


def test_min_tokens_holds_back_eos(llm):
    eos = sorted(llm.engine.eos_token_ids)[0]
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=12, min_tokens=12,
                                                   stop_token_ids=list(range(512))))[0].outputs[0]
    assert len(out.token_ids) == 12 and eos not in out.token_ids[:-1]


def test_over_long_prompt_is_a_request_error_and_the_engine_goes_on(llm):
    with pytest.raises(RequestError) as e:
        llm.generate([[1] * MAX_LEN], GREEDY)
    assert str(e.value) == (
        f"the prompt has {MAX_LEN} tokens, but max_model_len is {MAX_LEN}, which leaves no room "
        f"for output; shorten the prompt to at most {MAX_LEN - 1} tokens."
    )
    assert tokens(llm.generate([[1, 2]], GREEDY))[0]
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": -1}, "temperature must be >= 0, got -1."),
    ({"top_p": 0}, "top_p must be in (0, 1], got 0."),
    ({"top_k": -2}, "top_k must be -1, 0 (all tokens) or a positive integer, got -2."),
    ({"max_tokens": 0}, "max_tokens must be >= 1, got 0."),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens must be <= max_tokens (2), got 5."),
    ({"logprobs": 21}, "logprobs must be in [0, 20], got 21."),
    ({"presence_penalty": 3}, "presence_penalty must be in [-2, 2], got 3."),
])
def test_invalid_sampling_params_say_the_allowed_range(kwargs, message):
    with pytest.raises(RequestError) as e:
        SamplingParams(**kwargs)
    assert str(e.value) == message


def test_bad_token_ids_and_empty_prompts(llm):
    with pytest.raises(RequestError, match=r"prompt token ids must be integers in \[0, 512\), got 600"):
        llm.generate([[1, 600]], GREEDY)
    with pytest.raises(RequestError, match="the prompt is empty"):
        llm.generate([""], GREEDY)


def test_abort_frees_blocks_in_the_same_step(llm):
    engine = llm.engine
    request = engine.make_request([1, 2, 3, 4], SamplingParams(max_tokens=50, ignore_eos=True))
    engine.add_request(request)
    engine.step()
    assert engine.cache.get_block_ids(request.request_id)
    out = engine.abort_request(request.request_id)
    assert out.finished and out.outputs[0].finish_reason == "abort"
    assert engine.cache.num_free_blocks == engine.cache.num_blocks
    # with async scheduling steps may still be in flight (the one running, the one telling
    # the runner the request left): reading them back yields nothing
    for _ in range(2):
        if engine.has_unfinished_requests():
            assert engine.step() == []
    assert not engine.has_unfinished_requests()


def test_text_and_chat(llm):
    out = llm.generate("Hello world", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0]
    assert out.prompt == "Hello world"
    assert out.outputs[0].text == llm.tokenizer.decode(out.outputs[0].token_ids)
    chat = llm.chat([{"role": "user", "content": "Hello"}], SamplingParams(max_tokens=4, ignore_eos=True))[0]
    assert chat.prompt_token_ids[:1] == llm.tokenizer.encode("<|im_start|>", add_special_tokens=False)


def test_logprobs(llm):
    out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=3, logprobs=2,
                                                   ignore_eos=True))[0].outputs[0]
    assert len(out.logprobs) == 3
    for token, lp in zip(out.token_ids, out.logprobs, strict=True):
        assert lp.token_id == token and len(lp.top) == 2
        assert lp.top[0][0] == token  # greedy: the chosen token is the most likely
        assert lp.logprob == pytest.approx(lp.top[0][1])


def test_warm_up_leaves_no_trace(checkpoint, llm):
    """The start-up warm-up (run on CUDA; called here by hand) ends with every block free, no
    request left, fresh metrics and an empty prefix cache: the engine then answers exactly as
    one that never warmed up."""
    want = tokens(llm.generate(prompts(llm.engine.vocab_size, 4), SamplingParams(temperature=0, max_tokens=6)))
    warm = make_llm(checkpoint, cache={"backend": "prefix", "num_blocks": 64, "block_size": 4})
    engine = warm.engine
    assert engine.warm_up() > 0
    assert not engine.has_unfinished_requests() and not engine.scheduler.requests
    assert engine.cache.num_free_blocks == engine.cache.num_blocks
    assert engine.metrics.stats.prompt_tokens == 0 and not engine.metrics.stats.finished
    assert engine.cache.num_cached_blocks == 0  # the prefix cache forgot the warm-up prompts
    got = warm.generate(prompts(engine.vocab_size, 4), SamplingParams(temperature=0, max_tokens=6))
    assert tokens(got) == want
    assert engine.metrics.stats.prefix_cache_queries == sum(len(p) for p in prompts(engine.vocab_size, 4))
    assert engine.cache.num_free_blocks == engine.cache.num_blocks


def test_small_m_gemm_needs_a_gpu(checkpoint):
    with pytest.raises(ConfigError, match=r"model\.small_m_gemm runs a Triton kernel and needs a CUDA device"):
        make_llm(checkpoint, small_m_gemm=True)
