"""The workload generators: deterministic for a seed, exact lengths, nano-vllm's W2 stream,
W5's chat text of exact token counts."""

from __future__ import annotations

import random

import pytest

from infer_core.bench.text import TextMaker
from infer_core.bench.workloads import FAMILIES, WorkloadOptions, make_workloads, parse_workloads
from infer_core.errors import ConfigError
from infer_core.loader.tokenizer import Tokenizer
from infer_core.testing.fixtures import tiny_checkpoint


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_dir(tiny_checkpoint("llama", tokenizer=True, vocab_size=512))


def opts(tokenizer=None, **kw) -> WorkloadOptions:
    return WorkloadOptions(text_maker=TextMaker(tokenizer) if tokenizer else None, **kw)


def test_every_family_is_deterministic_for_a_seed(tokenizer):
    a = make_workloads(FAMILIES, opts(tokenizer, seed=3, scale=0.1))
    b = make_workloads(FAMILIES, opts(tokenizer, seed=3, scale=0.1))
    c = make_workloads(FAMILIES, opts(tokenizer, seed=4, scale=0.1))
    assert [w.requests for w in a] == [w.requests for w in b]
    assert [w.requests for w in a] != [w.requests for w in c]
    assert [w.name for w in a] == ["W1", "W2", "W3-c1", "W3-c8", "W3-c32", "W3-c128", "W4",
                                   "W5-shared", "W5-control", "W6"]


def test_lengths_are_exact_and_in_range():
    workloads = {w.name: w for w in make_workloads(["W1", "W2", "W3", "W4", "W6"], opts(vocab_size=151936))}
    (w1,) = workloads["W1"].requests
    assert (len(w1.prompt_token_ids), w1.max_tokens) == (256, 256)
    w2 = workloads["W2"].requests
    assert len(w2) == 256 and all(100 <= len(r.prompt_token_ids) <= 1024 and 100 <= r.max_tokens <= 1024 for r in w2)
    assert all(0 <= t <= 10_000 for r in w2 for t in r.prompt_token_ids)
    assert {len(workloads[f"W3-c{c}"].requests) for c in (1, 8)} == {8, 16}
    assert len(workloads["W3-c128"].requests) == 256 and workloads["W3-c128"].max_concurrency == 128
    assert all(len(r.prompt_token_ids) == 1024 and r.max_tokens == 128 for r in workloads["W3-c32"].requests)
    w4 = workloads["W4"].requests
    assert len(w4) == 64 and all(32 <= r.prompt_len <= 1024 and 64 <= r.max_tokens <= 256 for r in w4)
    assert all(r.prompt_len == len(r.prompt_token_ids) for w in workloads.values() for r in w.requests)
    w6 = workloads["W6"].requests
    longs = [r for r in w6 if r.tag == "long"]
    assert len(w6) == 36 and [r.prompt_len for r in longs] == [4096] * 4
    assert [r.arrival_offset for r in longs] == [0.5, 1.0, 1.5, 2.0]


def test_w2_is_nano_vllms_stream():
    rng = random.Random(0)  # nano-vllm's bench.py after seed(0)
    prompts = [[rng.randint(0, 10000) for _ in range(rng.randint(100, 1024))] for _ in range(256)]
    outputs = [rng.randint(100, 1024) for _ in range(256)]
    (w2,) = make_workloads(["W2"], opts())
    assert [r.prompt_token_ids for r in w2.requests] == prompts
    assert [r.max_tokens for r in w2.requests] == outputs
    assert {r.temperature for r in w2.requests} == {0.6}


def test_small_vocabularies_bound_the_ids_and_options_scale_and_cap():
    (w4,) = make_workloads(["W4"], opts(vocab_size=512, scale=0.5, num_prompts=5))
    assert len(w4.requests) == 5
    assert all(t < 512 for r in w4.requests for t in r.prompt_token_ids)
    assert all(16 <= r.prompt_len <= 512 and 32 <= r.max_tokens <= 128 for r in w4.requests)


def test_w5_chat_text_has_exact_token_counts(tokenizer):
    shared, control = make_workloads(["W5"], opts(tokenizer, scale=0.25, num_prompts=6))
    assert (shared.name, control.name) == ("W5-shared", "W5-control")
    systems = {r.messages[0]["content"] for r in shared.requests}
    assert len(systems) == 1  # one system prompt shared by every request
    assert len({r.messages[0]["content"] for r in control.requests}) == 6  # 0 % hits
    for r in shared.requests + control.requests:
        system, user = (m["content"] for m in r.messages)
        assert len(tokenizer.encode(system, add_special_tokens=False)) == 256
        assert len(tokenizer.encode(user, add_special_tokens=False)) == 8
        assert r.max_tokens == 16 and r.prompt_len == 264


def test_names_and_errors():
    assert parse_workloads("w1, W3-c8") == ["W1", "W3-C8"]
    assert parse_workloads("all") == list(FAMILIES)
    assert [w.name for w in make_workloads(["W3-c8"], opts(scale=0.05))] == ["W3-c8"]
    with pytest.raises(ConfigError, match="unknown workload 'W9'"):
        parse_workloads("W9")
    with pytest.raises(ConfigError, match="has no variant 'W3-C7'"):
        make_workloads(["W3-c7"], opts(scale=0.05))
    with pytest.raises(ConfigError, match="--tokenizer DIR"):
        make_workloads(["W5"], opts())
