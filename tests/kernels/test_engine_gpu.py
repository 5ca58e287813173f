"""The engine on a CUDA device with a tiny checkpoint: ``attention.backend = "auto"`` picks
``triton`` there, greedy decoding equals the torch backend's in float32, and an FP8 KV cache
runs end to end (its greedy agreement with bf16 KV is printed). Run with ``-m gpu``."""

from __future__ import annotations

import itertools

import pytest
import torch

from infer_core import LLM, SamplingParams
from infer_core.testing import caches
from infer_core.testing.fixtures import tiny_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def make_llm(checkpoint, **settings) -> LLM:
    cache = {"num_blocks": 64, "block_size": 16, "backend": "small_blocks", **settings.pop("cache", {})}
    return LLM(model=str(checkpoint), plugins=[caches], device="cuda", max_model_len=256,
               max_num_batched_tokens=128, max_num_seqs=16, cache=cache, **settings)


def long_llm(checkpoint, **settings) -> LLM:
    """:func:`make_llm` for prompts of up to 2,000 tokens, in float32."""
    cache = {"num_blocks": 160, "block_size": 16, "backend": "small_blocks"}
    return LLM(model=str(checkpoint), plugins=[caches], device="cuda", max_model_len=2048, dtype="float32",
               max_num_batched_tokens=512, max_num_seqs=4, cache=cache, **settings)


def batch(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (1, 17, 150, 40)]


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_auto_picks_triton_and_matches_torch_fp32(arch):
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    auto = make_llm(checkpoint, dtype="float32")
    assert auto.engine.layout.attention_backend == "triton"
    reference = make_llm(checkpoint, dtype="float32", attention={"backend": "torch"})
    ours = [o.outputs[0].token_ids for o in auto.generate(batch(512), GREEDY)]
    theirs = [o.outputs[0].token_ids for o in reference.generate(batch(512), GREEDY)]
    assert ours == theirs


@pytest.mark.parametrize("arch", ["gemma3"])
def test_fp8_kv_cache_end_to_end(arch):
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    bf16 = make_llm(checkpoint, dtype="bfloat16")
    fp8 = make_llm(checkpoint, dtype="bfloat16", cache={"kv_dtype": "fp8"})
    assert fp8.engine.layout.kv_dtype == torch.float8_e4m3fn
    a = [o.outputs[0].token_ids for o in bf16.generate(batch(512), GREEDY)]
    b = [o.outputs[0].token_ids for o in fp8.generate(batch(512), GREEDY)]
    same = sum(x == y for sa, sb in zip(a, b, strict=True) for x, y in zip(sa, sb, strict=True))
    print(f"{arch}: fp8 KV greedy agreement with bf16 KV {same}/{sum(map(len, a))}")
    assert all(len(s) == GREEDY.max_tokens for s in b)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_cuda_graph_replay_equals_eager(arch):
    """Greedy tokens and logprobs of decode steps replayed from CUDA graphs equal eager steps
    (float32), at batch sizes on and between the ladder's rungs, across block boundaries and
    (Gemma 3) sliding windows; blocks all return."""
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=1)
    graphs = make_llm(checkpoint, dtype="float32")
    eager = make_llm(checkpoint, dtype="float32", enforce_eager=True)
    runner = graphs.engine.runner
    assert eager.engine.runner.graphs is None
    assert runner.graphs is not None and sorted(runner.graphs.captured) == [1, 2, 4, 8, 16]
    replays = []
    replay = runner.graphs.replay
    runner.graphs.replay = lambda size: replays.append(size) or replay(size)
    gen = torch.Generator().manual_seed(1)
    for n in (1, 3, 5, 16):
        prompts = [torch.randint(0, 512, (int(k),), generator=gen).tolist()
                   for k in torch.randint(1, 120, (n,), generator=gen)]
        want = eager.generate(prompts, params)
        got = graphs.generate(prompts, params)
        for a, b in zip(want, got, strict=True):
            assert a.outputs[0].token_ids == b.outputs[0].token_ids
            for x, y in zip(a.outputs[0].logprobs, b.outputs[0].logprobs, strict=True):
                assert x.logprob == pytest.approx(y.logprob, abs=1e-3)
    assert {1, 4, 8, 16} <= set(replays)
    assert graphs.engine.cache.num_free_blocks == 64


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_greedy_decode_steps_sample_inside_the_graph(arch):
    """A plain greedy decode step (no logprobs, penalties or min_tokens) takes the argmax its
    CUDA graph computed, with no sampler call after the replay; tokens equal eager steps'
    (float32), for a request alone and batched (async scheduling: ids in flight are placed from
    the graph's argmax); a step with logprobs reads the graph's logits through the sampler;
    every block back."""
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    graphs = make_llm(checkpoint, dtype="float32")
    eager = make_llm(checkpoint, dtype="float32", enforce_eager=True)
    runner = graphs.engine.runner
    events: list[str] = []
    replay, sampler = runner.graphs.replay, runner.sampler
    runner.graphs.replay = lambda size: events.append("replay") or replay(size)
    runner.sampler = lambda logits, meta: events.append("sample") or sampler(logits, meta)
    for prompts in (batch(512)[:1], batch(512)):
        events.clear()
        want = [o.outputs[0].token_ids for o in eager.generate(prompts, GREEDY)]
        got = [o.outputs[0].token_ids for o in graphs.generate(prompts, GREEDY)]
        assert got == want
        assert events.count("replay") >= GREEDY.max_tokens - 4
        assert all(not (a == "replay" and b == "sample") for a, b in itertools.pairwise(events))
    events.clear()
    with_logprobs = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    got = graphs.generate(batch(512), with_logprobs)
    want = eager.generate(batch(512), with_logprobs)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want]
    assert events.count("replay") and all(b == "sample" for a, b in itertools.pairwise(events) if a == "replay")
    assert graphs.engine.cache.num_free_blocks == graphs.engine.cache.num_blocks


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_small_m_gemm_equals_cublas_fp32(arch):
    """``model.small_m_gemm`` (on by default on CUDA): batch-1 decode steps (replayed as CUDA
    graphs) take the Triton small-M GEMM; greedy tokens equal cuBLAS's in float32, for
    requests alone and batched."""
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    on = make_llm(checkpoint, dtype="float32")
    off = make_llm(checkpoint, dtype="float32", small_m_gemm=False)
    for prompts in [batch(512)[:1], batch(512)[1:2], batch(512)]:
        ours = [o.outputs[0].token_ids for o in on.generate(prompts, GREEDY)]
        theirs = [o.outputs[0].token_ids for o in off.generate(prompts, GREEDY)]
        assert ours == theirs
    assert on.engine.cache.num_free_blocks == on.engine.cache.num_blocks


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_gated_epilogue_equals_unfused_fp32(arch):
    """``model.small_m_gated_epilogue`` (opt-in): batch-1 decode steps (replayed as CUDA
    graphs) run the MLP's activation in gate/up's epilogue; greedy tokens equal those with it
    off (activation launched on its own), and with the act prologue on as well (the epilogue
    wins), for requests alone and batched."""
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    on = make_llm(checkpoint, dtype="float32", small_m_gated_epilogue=True)
    both = make_llm(checkpoint, dtype="float32", small_m_prologues="all", small_m_gated_epilogue=True)
    off = make_llm(checkpoint, dtype="float32", small_m_gated_epilogue=False)
    for prompts in [batch(512)[:1], batch(512)[1:2], batch(512)]:
        theirs = [o.outputs[0].token_ids for o in off.generate(prompts, GREEDY)]
        assert [o.outputs[0].token_ids for o in on.generate(prompts, GREEDY)] == theirs
        assert [o.outputs[0].token_ids for o in both.generate(prompts, GREEDY)] == theirs
    assert on.engine.cache.num_free_blocks == on.engine.cache.num_blocks


@pytest.mark.parametrize(("arch", "overrides"), [("llama", {"head_dim": 32}), ("qwen3", {})])
@pytest.mark.parametrize(("stages", "group_sync"), [("", ""), ("2", ""), ("", "0"), ("", "1"), ("", "2")])
def test_persistent_decode_equals_usual_path_fp32(arch, overrides, stages, group_sync, monkeypatch):
    """``model.persistent_decode`` (on by default with CUDA): batch-1 decode steps (replayed as CUDA graphs)
    run one persistent launch per layer (``INFER_DECODE_STAGES=2``: each stage its own launch, PDL
    between them; ``INFER_DECODE_GROUP_SYNC``: per-KV-group counters instead of barrier 0, and of
    barrier 1 with 2, the default); greedy tokens equal those of the usual path, for requests alone
    and batched (those keep the usual path), every block back."""
    if not stages:  # (4 + 2 x 2) heads of 128: more qkv rows than programs, which group_sync needs
        overrides = {**overrides, "head_dim": 128}
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512, **overrides)
    with monkeypatch.context() as env:
        env.setenv("INFER_DECODE_STAGES", stages)
        env.setenv("INFER_DECODE_GROUP_SYNC", group_sync)
        on = make_llm(checkpoint, dtype="float32", persistent_decode=True)
    assert on.engine.model.model.persistent_decode.stages == bool(stages)
    num_layers = len(on.engine.model.model.layers)
    assert on.engine.model.model.persistent_decode.launches_per_step == (6 * num_layers if stages else num_layers)
    off = make_llm(checkpoint, dtype="float32", persistent_decode=False)
    default = make_llm(checkpoint, dtype="float32")
    assert default.engine.model.model.persistent_decode.enabled  # on by default with CUDA
    for prompts in [batch(512)[:1], batch(512)[1:2], batch(512)]:
        theirs = [o.outputs[0].token_ids for o in off.generate(prompts, GREEDY)]
        assert [o.outputs[0].token_ids for o in on.generate(prompts, GREEDY)] == theirs
    persistent = on.engine.model.model.persistent_decode
    assert persistent.active  # the stack qualified and ran
    if not stages:  # the group_sync that took effect
        from infer_core.kernels.decode_layer import default_group_sync

        assert persistent.launch_kind == int(group_sync or default_group_sync())
    assert on.engine.cache.num_free_blocks == on.engine.cache.num_blocks


@pytest.mark.parametrize(("env", "stages"), [({"INFER_DECODE_MIN_SPLITS": "2"}, ""),
                                             ({"INFER_DECODE_MIN_SPLITS": "2", "INFER_DECODE_KV_AHEAD": "1"}, ""),
                                             ({"INFER_DECODE_MIN_SPLITS": "2", "INFER_DECODE_KV_AHEAD": "1"}, "2")])
def test_persistent_decode_long_context_levers_equal_usual_path_fp32(env, stages, monkeypatch):
    """``min_splits`` (each step the fewest splits that give each at most one key tile) and
    ``kv_ahead`` (later key tiles asked into L2), one launch or stage by stage: greedy tokens of
    prompts long enough for several tiles per split equal the usual path's, every block back."""
    checkpoint = tiny_checkpoint("qwen3", tokenizer=True, vocab_size=512, head_dim=128)
    with monkeypatch.context() as m:
        for name, value in {**env, "INFER_DECODE_STAGES": stages}.items():
            m.setenv(name, value)
        on = long_llm(checkpoint, persistent_decode=True)
    off = long_llm(checkpoint, persistent_decode=False)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = [[i % 500 + 1 for i in range(n)] for n in (1500, 300)]  # 47 and 10 key tiles of 32 (float32)
    for group in (prompts[:1], prompts[1:]):
        want = [o.outputs[0].token_ids for o in off.generate(group, params)]
        assert [o.outputs[0].token_ids for o in on.generate(group, params)] == want
    assert on.engine.model.model.persistent_decode.active
    assert on.engine.cache.num_free_blocks == on.engine.cache.num_blocks


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_lm_head_equals_cublas_path(arch, dtype, monkeypatch):
    """A batch-1 decode graph takes its logits and their argmax from one launch
    (``kernels.lm_head``; ``INFER_LM_HEAD_ARGMAX=0``: cuBLAS, a copy, the two-stage argmax): the
    same greedy tokens, alone and batched, logprobs within rounding; every block back."""
    from infer_core.kernels import lm_head

    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    calls = []
    original = lm_head.lm_head_argmax
    monkeypatch.setattr(lm_head, "lm_head_argmax", lambda *a, **k: calls.append(1) or original(*a, **k))
    on = make_llm(checkpoint, dtype=dtype)
    assert calls  # captured into the size-1 graph (the switch is read at capture)
    with monkeypatch.context() as env:
        env.setenv("INFER_LM_HEAD_ARGMAX", "0")
        off = make_llm(checkpoint, dtype=dtype)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=1)
    for prompts in (batch(512)[:1], batch(512)[1:2], batch(512)):
        got = [o.outputs[0].token_ids for o in on.generate(prompts, GREEDY)]
        assert got == [o.outputs[0].token_ids for o in off.generate(prompts, GREEDY)]
        want, got = off.generate(prompts, params), on.generate(prompts, params)  # the graph's logits, sampled
        for a, b in zip(want, got, strict=True):
            assert a.outputs[0].token_ids == b.outputs[0].token_ids
            for x, y in zip(a.outputs[0].logprobs, b.outputs[0].logprobs, strict=True):
                assert x.logprob == pytest.approx(y.logprob, abs=1e-3 if dtype == "float32" else 0.1)
    assert on.engine.cache.num_free_blocks == on.engine.cache.num_blocks


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_final_norm_folded_into_the_head(arch, monkeypatch):
    """``INFER_LM_HEAD_NORM=1``: the size-1 decode graph's head launch also computes the stack's
    final norm (``lm_head_argmax(norm=...)``, one launch fewer): the same greedy tokens (bf16),
    logprobs within rounding, alone and batched; every block back."""
    from infer_core.kernels import lm_head

    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    folded = []
    original = lm_head.lm_head_argmax
    monkeypatch.setattr(lm_head, "lm_head_argmax",
                        lambda *a, **k: folded.append(k.get("norm") is not None) or original(*a, **k))
    off = make_llm(checkpoint, dtype="bfloat16")
    assert folded and not any(folded)
    with monkeypatch.context() as env:
        env.setenv("INFER_LM_HEAD_NORM", "1")
        on = make_llm(checkpoint, dtype="bfloat16")  # (read at capture)
    assert any(folded)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=1)
    for got, want in zip(alone_and_batched(on, params), alone_and_batched(off, params), strict=True):
        for a, b in zip(got, want, strict=True):
            assert a.token_ids == b.token_ids
            for x, y in zip(a.logprobs, b.logprobs, strict=True):
                assert x.logprob == pytest.approx(y.logprob, abs=0.1)
    assert on.engine.cache.num_free_blocks == on.engine.cache.num_blocks


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("in_gather", ["0", "1"])
def test_placeholders_filled_inside_the_graph(arch, in_gather, monkeypatch):
    """Async scheduling with the in-graph fill (the default): a decode graph fills the ids still
    in flight itself (kernels.fill_ids, from the buffer its argmax writes; ``INFER_GRAPH_FILL=0``:
    three torch launches outside the graph; ``INFER_GRAPH_FILL_GATHER=1``: in the block-table
    gather's launch): the same greedy tokens (bf16), alone and batched, with a logprobs request
    in the batch (its ids come through the sampler, copied into that buffer); every block back."""
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    with monkeypatch.context() as env:
        env.delenv("INFER_GRAPH_FILL", raising=False)
        env.setenv("INFER_GRAPH_FILL_GATHER", in_gather)
        on = make_llm(checkpoint, dtype="bfloat16")
    assert on.engine.runner.graph_fill and on.engine.runner.fill_in_gather == (in_gather == "1")
    with monkeypatch.context() as env:
        env.setenv("INFER_GRAPH_FILL", "0")
        off = make_llm(checkpoint, dtype="bfloat16")
    assert not off.engine.runner.graph_fill
    mixed = [GREEDY, GREEDY, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=1), GREEDY]
    for prompts, params in ((batch(512)[:1], GREEDY), (batch(512), GREEDY), (batch(512), mixed)):
        got = [o.outputs[0].token_ids for o in on.generate(prompts, params)]
        want = [o.outputs[0].token_ids for o in off.generate(prompts, params)]
        assert got == want
    assert on.engine.cache.num_free_blocks == on.engine.cache.num_blocks


def alone_and_batched(llm, params: SamplingParams) -> list:
    """The first completion of each request: one request alone, then the whole batch."""
    return [[o.outputs[0] for o in llm.generate(p, params)] for p in (batch(512)[:1], batch(512))]


def assert_same_tokens_and_logprobs(results_on: list, results_off: list) -> None:
    """Per prompt list, per request: the same token ids and the same logprobs, exactly."""
    for got, want in zip(results_on, results_off, strict=True):
        for a, b in zip(got, want, strict=True):
            assert a.token_ids == b.token_ids
            assert [x.logprob for x in a.logprobs] == [y.logprob for y in b.logprobs]


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_programmatic_dependent_launch_changes_nothing(arch, monkeypatch):
    """PDL on (the default from compute capability 9.0) vs off (``INFER_PDL=0``, read when
    the kernels are launched, so also when the decode graphs are captured): the same greedy
    tokens and logprobs, in bf16 (no kernel waits for an output it does not get), requests
    alone and batched, every block back."""
    from infer_core.kernels.pdl import use_pdl

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability 9.0")
    assert use_pdl(torch.empty(1, device="cuda"))
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=1)
    on = make_llm(checkpoint, dtype="bfloat16")
    with monkeypatch.context() as env:
        env.setenv("INFER_PDL", "0")
        assert not use_pdl(torch.empty(1, device="cuda"))
        off = make_llm(checkpoint, dtype="bfloat16")
        results_off = alone_and_batched(off, params)
    results_on = alone_and_batched(on, params)
    assert_same_tokens_and_logprobs(results_on, results_off)
    assert on.engine.cache.num_free_blocks == on.engine.cache.num_blocks


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_gather_rows_changes_nothing(arch, monkeypatch):
    """The embedding lookup and the decode graphs' block-table rows through the PDL gather
    (kernels.gather_rows, the default) instead of torch's (``INFER_GATHER_ROWS=0``): an exact
    copy, so the same greedy tokens and logprobs (bf16), alone and batched, every block back."""
    checkpoint = tiny_checkpoint(arch, tokenizer=True, vocab_size=512)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=1)
    with monkeypatch.context() as env:
        env.setenv("INFER_GATHER_ROWS", "0")
        off = make_llm(checkpoint, dtype="bfloat16")
        results_off = alone_and_batched(off, params)
    on = make_llm(checkpoint, dtype="bfloat16")
    results_on = alone_and_batched(on, params)
    assert_same_tokens_and_logprobs(results_on, results_off)
    assert on.engine.cache.num_free_blocks == on.engine.cache.num_blocks
