"""Streaming output over the real tokenizers (SmolLM2, Gemma 3, Qwen 3) with the text that
breaks detokenizers: emoji with skin tones, ZWJ sequences and flags, CJK, Hangul, Devanagari,
Arabic, combining marks, variation selectors, astral characters.

tests/core/test_output_processor.py covers stop strings on a trained BPE and fixed samples on
the real tokenizers; this file adds, on every real tokenizer and drawn by hypothesis:

- the streamed deltas add up to the full decode, and the text streamed so far is always a
  prefix of it (nothing is ever taken back);
- no delta holds U+FFFD unless the full decode has one there (a character split across tokens
  is held until it is whole), for encoded text and for arbitrary token ids;
- stop strings (substrings of the text, so they often span tokens and split characters'
  tokens) never reach the client, and the output is the decode cut at the first stop.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infer_core.engine.detokenizer import OutputState
from infer_core.loader.tokenizer import Tokenizer
from infer_core.request import SamplingParams

REAL = ["smollm2", "gemma3", "qwen3"]
# graphemes, several of them many code points (and many tokens) long
GRAPHEMES = [
    "a", "b", " ", "\n", ".", "x",
    "😀", "👍🏽", "👩‍💻", "👨‍👩‍👧", "🇫🇷", "❤️", "🪿", "🫨",  # emoji: skin tone, ZWJ, flag, VS16, new
    "中", "文", "字", "価", "한", "국", "어",  # CJK, Hangul
    "e\u0301", "a\u0308", "o\u0323\u0302", "n\u0303", "\u0301",  # combining marks (and a lone one)
    "न", "म", "स्", "ते", "م", "ر", "ح", "ب",  # Devanagari with virama, Arabic
    "𠜎", "ꙮ", "𝔘",  # astral CJK, rare Cyrillic, math
]
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", params=REAL)
def real(request) -> Tokenizer:
    from infer_core.testing import fixtures

    path = {"smollm2": fixtures.smollm2_135m_instruct, "gemma3": fixtures.gemma3_270m,
            "qwen3": fixtures.qwen3_tokenizer}[request.param]()
    return Tokenizer.from_dir(path)


rich_text = st.lists(st.sampled_from(GRAPHEMES), min_size=1, max_size=24).map("".join)


def stream(tok: Tokenizer, token_ids: list[int], stops: list[str] | None = None,
           include: bool = False) -> tuple[OutputState, list[str]]:
    params = SamplingParams(max_tokens=len(token_ids), stop=stops or None,
                            include_stop_str_in_output=include)
    state = OutputState(tok, params, [], frozenset(), len(token_ids))
    deltas = []
    for token_id in token_ids:
        delta = state.append(token_id)
        deltas.append(delta.text)
        if delta.finished:
            break
    return state, deltas


def check_stable_stream(tok: Tokenizer, token_ids: list[int]) -> None:
    full = tok.decode(token_ids)
    state, deltas = stream(tok, token_ids)
    assert "".join(deltas) == state.text == full
    streamed = ""
    for delta in deltas:
        streamed += delta
        assert full.startswith(streamed), (streamed, full)  # nothing is taken back
        if "\ufffd" in delta:  # a replacement character only where the final text has one
            assert full[len(streamed) - len(delta):len(streamed)] == delta


@SETTINGS
@given(text=rich_text)
def test_deltas_add_up_to_the_decode_and_never_take_back(real, text):
    token_ids = real.encode(text, add_special_tokens=False)
    check_stable_stream(real, token_ids)
    assert "\ufffd" not in real.decode(token_ids)


@SETTINGS
@given(data=st.data())
def test_arbitrary_ids_stream_stably(real, data):
    """Ids no text encodes to: pieces of encoded rich text shuffled, and random ids (byte
    tokens among them), so that characters are cut and never completed."""
    pieces = real.encode(data.draw(rich_text), add_special_tokens=False)
    token_ids = data.draw(st.lists(st.one_of(st.sampled_from(pieces),
                                             st.integers(0, real.vocab_size - 1)),
                                   min_size=1, max_size=24))
    check_stable_stream(real, token_ids)


def first_stop_reference(tok: Tokenizer, token_ids: list[int], stops: list[str],
                         include: bool) -> tuple[str, str | None]:
    """The text released token by token, cut at the first stop string seen (the earliest
    match, the shorter on a tie), and that stop."""
    detok, decoded = tok.detokenizer(), ""
    for k, token_id in enumerate(token_ids, 1):
        decoded += detok.step(token_id) + (detok.flush() if k == len(token_ids) else "")
        hits = [(decoded.find(s), len(s), s) for s in stops if s in decoded]
        if hits:
            start, length, stop = min(hits)
            return decoded[: start + length if include else start], stop
    return decoded, None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stop_strings_never_leak_and_cut_at_the_first(real, data):
    text = data.draw(rich_text)
    token_ids = real.encode(text, add_special_tokens=False)
    full = real.decode(token_ids)
    spans = st.tuples(st.integers(0, len(full) - 1), st.integers(1, 6)).map(
        lambda t: full[t[0]:t[0] + t[1]])
    stops = data.draw(st.lists(st.one_of(spans, st.sampled_from(GRAPHEMES)), min_size=1, max_size=3))
    include = data.draw(st.booleans())
    state, deltas = stream(real, token_ids, stops, include)
    expected, stop = first_stop_reference(real, token_ids, stops, include)
    assert "".join(deltas) == state.text == expected
    assert state.stop_reason == stop and state.finish_reason == ("stop" if stop else "length")
    streamed = ""
    for delta in deltas:
        streamed += delta
        assert full.startswith(streamed)
        assert "\ufffd" not in delta
        if not include:
            assert not any(s in streamed for s in stops), (stops, streamed)
