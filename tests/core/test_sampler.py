"""The batched sampler against straightforward per-row references: greedy is argmax, top-k /
top-p / min-p keep the reference's sets, penalties and min_tokens match, seeded requests
draw the same stream whatever their neighbours, unseeded draws follow the distribution,
logprobs are the raw model's."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from infer_core.engine.sampler import Sampler, SamplingMetadata
from infer_core.request import SamplingParams

sampler = Sampler()


def meta_for(
    params: list[SamplingParams],
    vocab: int,
    *,
    prompts: list[list[int]] | None = None,
    outputs: list[list[int]] | None = None,
    generators: dict[int, torch.Generator] | None = None,
    eos: frozenset[int] = frozenset(),
) -> SamplingMetadata:
    rows = len(params)
    return SamplingMetadata.from_params(
        params,
        prompts if prompts is not None else [[] for _ in range(rows)],
        outputs if outputs is not None else [[] for _ in range(rows)],
        generators or {},
        vocab,
        "cpu",
        [eos] * rows,
    )


# ---------------------------------------------------------------- per-row references


def ref_penalties(logits: list[float], prompt: list[int], output: list[int], p: SamplingParams) -> list[float]:
    """Repetition over prompt + output, then presence / frequency over the output."""
    out = list(logits)
    for token in set(prompt) | set(output):
        value = out[token]
        out[token] = value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
    for token, count in Counter(output).items():
        out[token] -= p.presence_penalty + p.frequency_penalty * count
    return out


def ref_filtered(logits: list[float], p: SamplingParams) -> tuple[list[float], float]:
    """The distribution a random row samples from (temperature, top-k, top-p on the top-k
    renormalized mass, min-p), and how close the input came to a keep/drop boundary."""
    vocab = len(logits)
    scaled = [x / p.temperature for x in logits]
    order = sorted(range(vocab), key=lambda i: -scaled[i])
    kept = set(range(vocab))
    if 0 < p.top_k < vocab:
        threshold = scaled[order[p.top_k - 1]]
        kept = {i for i in kept if scaled[i] >= threshold}
    top = max(scaled)
    weights = {i: math.exp(scaled[i] - top) for i in kept}
    total = sum(weights.values())
    probs = {i: w / total for i, w in weights.items()}
    margin = math.inf
    if p.top_p < 1.0:
        nucleus, mass = set(), 0.0
        for i in order:
            if i not in kept:
                continue
            nucleus.add(i)
            mass += probs[i]
            margin = min(margin, abs(mass - p.top_p))
            if mass >= p.top_p:
                break
        kept = nucleus
    if p.min_p > 0.0:
        best = max(probs[i] for i in kept)
        floor = p.min_p * best
        margin = min([margin, *(abs(probs[i] - floor) / best for i in kept)])
        kept = {i for i in kept if probs[i] >= floor}
    total = sum(probs[i] for i in kept)
    return [probs[i] / total if i in kept else 0.0 for i in range(vocab)], margin


def chi_square(counts: list[int], expected: list[float]) -> float:
    n = sum(counts)
    return sum((c - n * e) ** 2 / (n * e) for c, e in zip(counts, expected, strict=True) if e > 0)


# ---------------------------------------------------------------- greedy


def test_greedy_equals_argmax_including_ties() -> None:
    torch.manual_seed(0)
    logits = torch.randint(-3, 4, (16, 300)).float()  # many ties: argmax takes the lowest id
    meta = meta_for([SamplingParams(temperature=0.0)] * 16, 300)
    assert meta.all_greedy and meta.no_penalties and meta.no_min_tokens
    state = torch.get_rng_state()
    out = sampler(logits, meta)
    assert torch.equal(out.sampled_token_ids, torch.argmax(logits, dim=-1))
    assert out.sampled_token_ids.dtype == torch.int64
    assert torch.equal(torch.get_rng_state(), state), "the greedy fast path drew random numbers"


def test_greedy_rows_stay_greedy_in_a_mixed_batch() -> None:
    torch.manual_seed(1)
    vocab = 64
    logits = torch.randn(8, vocab) * 0.1  # flat: the random rows wander
    params = [SamplingParams(temperature=0.0 if row % 2 == 0 else 1.5, top_p=0.95, top_k=40, min_p=0.01)
              for row in range(8)]
    meta = meta_for(params, vocab)
    assert not meta.all_greedy and not meta.all_random
    greedy = torch.argmax(logits, dim=-1)
    random_rows = set()
    for _ in range(20):
        sampled = sampler(logits, meta).sampled_token_ids
        assert torch.equal(sampled[0::2], greedy[0::2])
        random_rows.update(sampled[1::2].tolist())
    assert len(random_rows) > 4


def test_top_k_1_and_tiny_top_p_are_greedy() -> None:
    torch.manual_seed(2)
    logits = torch.randn(6, 500)
    params = [SamplingParams(temperature=2.0, top_k=1)] * 3 + [SamplingParams(temperature=2.0, top_p=1e-6)] * 3
    meta = meta_for(params, 500)
    for _ in range(10):
        assert torch.equal(sampler(logits, meta).sampled_token_ids, logits.argmax(dim=-1))


# ---------------------------------------------------------------- top-k, top-p, min-p


def kept(logits: torch.Tensor, params: SamplingParams) -> set[int]:
    probs = Sampler.filtered_probs(logits[None].clone(), meta_for([params], logits.shape[0]))
    return set(torch.nonzero(probs[0]).flatten().tolist())


def test_top_k_keeps_exactly_the_k_best() -> None:
    logits = torch.randperm(50).float() / 7
    best = logits.argsort(descending=True).tolist()
    for k in (1, 3, 10, 49):
        assert kept(logits, SamplingParams(top_k=k)) == set(best[:k])
    assert kept(logits, SamplingParams(top_k=0)) == set(range(50))
    assert kept(logits, SamplingParams(top_k=-1)) == set(range(50))


def test_top_p_keeps_the_minimal_nucleus_and_min_p_the_ratio() -> None:
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert kept(logits, SamplingParams(top_p=0.4)) == {0}
    assert kept(logits, SamplingParams(top_p=0.75)) == {0, 1}
    assert kept(logits, SamplingParams(top_p=0.85)) == {0, 1, 2}
    assert kept(logits, SamplingParams(top_p=0.97)) == {0, 1, 2, 3}
    assert kept(logits, SamplingParams(min_p=0.5)) == {0, 1}  # p >= 0.25
    assert kept(logits, SamplingParams(min_p=0.2)) == {0, 1, 2}  # p >= 0.1
    assert kept(logits, SamplingParams(min_p=1.0)) == {0}
    # top-p is taken on the top-k renormalized mass: 0.5 / 0.95 = 0.526 reaches 0.52
    assert kept(logits, SamplingParams(top_p=0.52)) == {0, 1}
    assert kept(logits, SamplingParams(top_k=3, top_p=0.52)) == {0}


def test_top_k_keeps_exactly_k_even_among_ties_on_both_paths() -> None:
    logits = torch.zeros(2, 10)
    meta = meta_for([SamplingParams(top_k=3), SamplingParams(top_k=4)], 10)
    assert meta.all_top_k  # topk candidates, no sort
    assert (Sampler.filtered_probs(logits, meta) > 0).sum(dim=-1).tolist() == [3, 4]
    meta = meta_for([SamplingParams(top_k=3), SamplingParams(top_p=0.99)], 10)
    assert not meta.all_top_k  # one sort
    assert (Sampler.filtered_probs(logits, meta) > 0).sum(dim=-1).tolist() == [3, 10]


def test_a_row_is_filtered_alike_on_the_topk_and_the_sort_path() -> None:
    torch.manual_seed(8)
    logits = torch.randn(2, 1000) * 2
    logits[0, 0] = -40.0  # a tail token far below float32 rounding of the cumulative mass
    row = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, min_p=0.02)
    fast = meta_for([row, row], 1000)
    slow = meta_for([row, SamplingParams(top_p=1.0, min_p=0.5)], 1000)
    assert fast.all_top_k and not slow.all_top_k and not slow.no_top_k_top_p
    got = Sampler.filtered_probs(logits, fast)[0]
    assert torch.allclose(got, Sampler.filtered_probs(logits, slow)[0], atol=1e-6)
    assert 0 < int((got > 0).sum()) <= 50
    # top_p = 1 keeps the whole tail on the sort path, however small
    sorted_meta = meta_for([SamplingParams(top_p=1.0), SamplingParams(top_p=0.5)], 1000)
    assert bool((Sampler.filtered_probs(logits, sorted_meta)[0] > 0).all())


@st.composite
def filter_cases(draw: st.DrawFn) -> tuple[torch.Tensor, list[SamplingParams]]:
    vocab = draw(st.integers(2, 24))
    rows = draw(st.integers(1, 4))
    logits = [[x / 100 for x in draw(st.lists(st.integers(-400, 400), min_size=vocab, max_size=vocab, unique=True))]
              for _ in range(rows)]
    params = [SamplingParams(
        temperature=draw(st.floats(0.25, 2.0)),
        top_k=draw(st.one_of(st.just(0), st.integers(-1, vocab + 2))),
        top_p=draw(st.one_of(st.just(1.0), st.floats(0.05, 1.0))),
        min_p=draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0))),
    ) for _ in range(rows)]
    return torch.tensor(logits), params


@settings(max_examples=150, deadline=None)
@given(filter_cases())
def test_filtered_distribution_matches_the_reference(case: tuple[torch.Tensor, list[SamplingParams]]) -> None:
    logits, params = case
    refs = [ref_filtered(row.double().tolist(), p) for row, p in zip(logits, params, strict=True)]
    assume(all(margin > 1e-4 for _, margin in refs))
    before = logits.clone()
    probs = Sampler.filtered_probs(logits, meta_for(params, logits.shape[1]))
    assert torch.equal(logits, before)
    for row, (ref, _) in enumerate(refs):
        got = probs[row].double()
        assert set(torch.nonzero(got).flatten().tolist()) == {i for i, q in enumerate(ref) if q > 0}
        assert torch.allclose(got / got.sum(), torch.tensor(ref, dtype=torch.float64), atol=1e-5)


# ---------------------------------------------------------------- penalties, min_tokens


@st.composite
def penalty_cases(draw: st.DrawFn) -> tuple[torch.Tensor, list[SamplingParams], list[list[int]], list[list[int]]]:
    vocab = draw(st.integers(2, 12))
    rows = draw(st.integers(1, 4))
    logits = [[x / 8 for x in draw(st.lists(st.integers(-40, 40), min_size=vocab, max_size=vocab))]
              for _ in range(rows)]
    tokens = st.lists(st.integers(0, vocab - 1), max_size=10)
    prompts = [draw(tokens) for _ in range(rows)]
    outputs = [draw(tokens) for _ in range(rows)]
    penalty = st.one_of(st.just(0.0), st.floats(-2.0, 2.0))
    params = [SamplingParams(
        temperature=draw(st.sampled_from([0.0, 1.0])),
        repetition_penalty=draw(st.one_of(st.just(1.0), st.floats(0.25, 4.0))),
        presence_penalty=draw(penalty),
        frequency_penalty=draw(penalty),
    ) for _ in range(rows)]
    return torch.tensor(logits), params, prompts, outputs


@settings(max_examples=200, deadline=None)
@given(penalty_cases())
def test_penalties_match_the_reference(case) -> None:
    logits, params, prompts, outputs = case
    vocab = logits.shape[1]
    meta = meta_for(params, vocab, prompts=prompts, outputs=outputs)
    before = logits.clone()
    got = Sampler.apply_logits_processors(logits, meta)
    assert torch.equal(logits, before), "the sampler modified its input"
    ref = torch.tensor([ref_penalties(row.double().tolist(), prompt, output, p)
                        for row, prompt, output, p in zip(logits, prompts, outputs, params, strict=True)],
                       dtype=torch.float64)
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-5)
    sampled = sampler(logits, meta).sampled_token_ids
    greedy = [row for row, p in enumerate(params) if p.temperature == 0.0]
    assert torch.equal(sampled[greedy], got[greedy].argmax(dim=-1))


def test_min_tokens_masks_eos_and_stop_ids_while_too_short() -> None:
    vocab, eos, stop = 40, 3, 7
    torch.manual_seed(3)
    logits = torch.randn(6, vocab)
    logits[:, eos] = 30.0
    logits[:, stop] = 29.0
    params = [
        SamplingParams(temperature=0.0, min_tokens=4, stop_token_ids=(stop,)),
        SamplingParams(temperature=1.0, min_tokens=4, stop_token_ids=(stop,)),
        SamplingParams(temperature=5.0, min_tokens=4, stop_token_ids=(stop,), ignore_eos=True),
        SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=(stop,)),  # long enough
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, min_tokens=4, stop_token_ids=(stop,), repetition_penalty=0.5),
    ]
    outputs = [[1, 2, 3], [1], [], [5, 6], [], [eos, stop]]
    meta = meta_for(params, vocab, outputs=outputs, eos=frozenset({eos}))
    for _ in range(50):
        sampled = sampler(logits, meta).sampled_token_ids.tolist()
        for row in (0, 1, 2, 5):
            assert sampled[row] not in (eos, stop)
        assert sampled[3] == eos and sampled[4] == eos


# ---------------------------------------------------------------- seeds and the distribution


def request_logits(step: int, vocab: int) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(100 + step)) * 0.5


FILTERED = {"temperature": 0.9, "top_p": 0.95, "top_k": 100, "repetition_penalty": 1.1}
PLAIN = {"temperature": 1.3}  # alone: the whole vocabulary; amid neighbours with top-p: sorted


def seeded_run(seed: int, neighbours: int, kind: dict, steps: int = 8, vocab: int = 256) -> list[int]:
    """One seeded request over several steps, its generator kept across them, amid
    ``neighbours`` other rows (random logits, parameters, seeds and positions)."""
    params = SamplingParams(**kind, seed=seed)
    own = torch.Generator().manual_seed(seed)
    chaos = torch.Generator().manual_seed(1000 + neighbours)
    tokens: list[int] = []
    for step in range(steps):
        rows = neighbours + 1
        position = int(torch.randint(rows, (1,), generator=chaos))
        logits = torch.randn(rows, vocab, generator=chaos)
        logits[position] = request_logits(step, vocab)
        all_params, outputs, generators = [], [], {}
        for row in range(rows):
            if row == position:
                all_params.append(params)
                outputs.append(list(tokens))
                generators[row] = own
                continue
            all_params.append(SamplingParams(temperature=float(torch.rand(1, generator=chaos)) * 2,
                                             top_p=0.8, presence_penalty=0.5))
            outputs.append(torch.randint(vocab, (5,), generator=chaos).tolist())
            if row % 2:
                generators[row] = torch.Generator().manual_seed(row)
        meta = meta_for(all_params, vocab, prompts=[[1, 2, 3]] * rows, outputs=outputs, generators=generators)
        tokens.append(int(sampler(logits, meta).sampled_token_ids[position]))
    return tokens


@pytest.mark.parametrize("kind", [FILTERED, PLAIN], ids=["filtered", "plain"])
def test_a_seeded_request_draws_the_same_tokens_whatever_its_neighbours(kind: dict) -> None:
    torch.manual_seed(4)
    alone = seeded_run(42, 0, kind)
    assert len(set(alone)) > 2
    assert seeded_run(42, 3, kind) == alone
    assert seeded_run(42, 6, kind) == alone
    assert seeded_run(43, 3, kind) != alone


def test_unseeded_draws_follow_the_distribution() -> None:
    torch.manual_seed(5)
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    draws = 20_000
    meta = meta_for([SamplingParams(temperature=1.0)] * draws, 6)
    sampled = sampler(probs.log().expand(draws, -1), meta).sampled_token_ids
    counts = torch.bincount(sampled, minlength=6).tolist()
    assert chi_square(counts, probs.tolist()) < 20.5  # df 5, p = 0.001


def test_filtered_draws_follow_the_filtered_distribution_seeded_or_not() -> None:
    torch.manual_seed(6)
    logits = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]).log()
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.95, min_p=0.2)  # each drops one
    expected, _ = ref_filtered(logits.double().tolist(), params)
    assert sum(q > 0 for q in expected) == 3
    draws = 6_000
    generators = {row: torch.Generator().manual_seed(row) for row in range(0, draws, 2)}
    meta = meta_for([params] * draws, 6, generators=generators)
    sampled = sampler(logits.expand(draws, -1), meta).sampled_token_ids
    for rows in (sampled[0::2], sampled[1::2]):  # seeded rows, unseeded rows
        counts = torch.bincount(rows, minlength=6).tolist()
        assert all(c == 0 for c, q in zip(counts, expected, strict=True) if q == 0)
        assert chi_square(counts, expected) < 13.8  # df 2, p = 0.001


# ---------------------------------------------------------------- logprobs


def test_logprobs_are_the_raw_models_and_top_n_is_sorted() -> None:
    torch.manual_seed(7)
    vocab = 100
    logits = torch.randn(4, vocab) * 3
    params = [
        SamplingParams(temperature=0.0, logprobs=5, repetition_penalty=1.5),
        SamplingParams(temperature=0.8, logprobs=2, top_k=10, presence_penalty=1.0),
        SamplingParams(temperature=1.0, min_tokens=3, logprobs=0),
        SamplingParams(temperature=1.2),
    ]
    meta = meta_for(params, vocab, prompts=[[1, 2]] * 4, outputs=[[3, 4]] * 4, eos=frozenset({0}))
    assert meta.max_num_logprobs == 5
    out = sampler(logits, meta)
    raw = torch.log_softmax(logits, dim=-1)
    assert out.logprobs is not None and out.top_token_ids is not None and out.top_logprobs is not None
    assert torch.allclose(out.logprobs, raw.gather(1, out.sampled_token_ids[:, None]).squeeze(1))
    assert out.top_token_ids.shape == out.top_logprobs.shape == (4, 5)
    assert torch.equal(out.top_token_ids, raw.argsort(dim=-1, descending=True)[:, :5])
    assert torch.allclose(out.top_logprobs, raw.gather(1, out.top_token_ids))
    assert bool((out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:]).all())

    lists = out.to_lists()
    assert lists.sampled_token_ids == out.sampled_token_ids.tolist()
    assert all(type(t) is int for t in lists.sampled_token_ids)
    assert lists.logprobs is not None and lists.top_token_ids is not None and lists.top_logprobs is not None
    assert all(type(x) is float for x in lists.logprobs)
    assert lists.logprobs == pytest.approx(out.logprobs.tolist())
    assert lists.top_token_ids == out.top_token_ids.tolist()
    assert all(type(t) is int for row in lists.top_token_ids for t in row)
    assert all(type(x) is float for row in lists.top_logprobs for x in row)
    assert all(len(row) == 5 for row in lists.top_logprobs)


def test_no_logprobs_unless_asked() -> None:
    meta = meta_for([SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)], 10)
    assert meta.max_num_logprobs is None
    lists = sampler(torch.randn(2, 10), meta).to_lists()
    assert lists.logprobs is None and lists.top_token_ids is None and lists.top_logprobs is None
    assert len(lists.sampled_token_ids) == 2 and all(type(t) is int for t in lists.sampled_token_ids)
