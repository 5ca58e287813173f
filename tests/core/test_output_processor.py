"""Output processing (``infer_core.engine.detokenizer.OutputState``): stop tokens, EOS,
``min_tokens``, ``max_tokens`` and stop strings matched across token boundaries, checked on a
tokenizer whose tokens are exactly the pieces a test names, on a small trained byte-level BPE
(hypothesis: the streamed deltas add up to the full decode cut at the first stop string and
never leak part of it) and (slow) on the real SmolLM2, Gemma 3 and Qwen 3 tokenizers, with
emoji and CJK characters split across tokens."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as Backend

from infer_core.engine.detokenizer import OutputDelta, OutputState
from infer_core.loader.tokenizer import Tokenizer
from infer_core.request import SamplingParams

# --- a tokenizer whose tokens are the pieces a test names ---------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what the ByteLevel decoder undoes)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs), strict=True))


B2U = bytes_to_unicode()
EOS, PAD, SEP = "<eos>", "<pad>", "<|sep|>"
PIECES: list[str | bytes] = [
    "Hel", "lo", " wor", "ld", "!", "xa", "xab", "b", "c", "d", "cd", "ef", "eX", "x", "a", "ab",
    "foo STOP bar", "STOP", "foo ", " bar", "\n", "ok ", " done", "Hello world", "xabcd", "yes",
    "中", "文", "é",
    b"\xf0\x9f", b"\x98\x80", b"\xe4", b"\xb8\xad", b"\xc3", b"\xa9",  # 😀, 中, é split in two
]


def piece_key(piece: str | bytes) -> str:
    data = piece if isinstance(piece, bytes) else piece.encode()
    return "".join(B2U[b] for b in data)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    vocab: dict[str, int] = {}
    for text in [*B2U.values(), *map(piece_key, PIECES)]:
        vocab.setdefault(text, len(vocab))
    backend = Backend(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (EOS, PAD, SEP)])
    return Tokenizer(backend, tokenizer_config={"eos_token": EOS, "pad_token": PAD})


def ids(tok: Tokenizer, *pieces: str | bytes) -> list[int]:
    out = []
    for piece in pieces:
        token_id = tok.token_to_id(piece) if piece in (EOS, PAD, SEP) else tok.token_to_id(piece_key(piece))
        assert token_id is not None, piece
        out.append(token_id)
    return out


def make(tok: Tokenizer, max_tokens: int = 100, prompt: Sequence[int] = (), eos: Any = None,
         **params: Any) -> OutputState:
    eos_ids = frozenset(tok.eos_token_ids) if eos is None else frozenset(eos)
    return OutputState(tok, SamplingParams(max_tokens=max_tokens, **params), list(prompt), eos_ids, max_tokens)


def run(state: OutputState, token_ids: Sequence[int]) -> list[OutputDelta]:
    """Append ids until the request finishes; check that ``text`` is always the deltas so far."""
    deltas = []
    for token_id in token_ids:
        deltas.append(state.append(token_id))
        assert state.text == "".join(d.text for d in deltas)
        assert state.num_output_tokens == len(deltas) == len(state.token_ids)
        if deltas[-1].finished:
            break
    return deltas


def texts(deltas: list[OutputDelta]) -> list[str]:
    return [d.text for d in deltas]


def finish(deltas: list[OutputDelta]) -> tuple[bool, str | None, int | str | None]:
    last = deltas[-1]
    assert not any(d.finished for d in deltas[:-1])
    return last.finished, last.finish_reason, last.stop_reason


# --- stop strings -------------------------------------------------------------------------------


def test_stop_string_spanning_two_tokens(tok):
    state = make(tok, stop=["lo w"])
    deltas = run(state, ids(tok, "Hel", "lo", " wor", "ld"))
    # "l" could begin "lo w", so it waits; the second "l" of "Hello" is released once "lo" is
    # the only candidate left; the stop ends the request at " wor".
    assert texts(deltas) == ["He", "l", ""]
    assert finish(deltas) == (True, "stop", "lo w")
    assert state.text == "Hel" and state.finished and state.finish_reason == "stop"
    assert state.stop_reason == "lo w" and state.token_ids == ids(tok, "Hel", "lo", " wor")


def test_stop_string_spanning_three_tokens(tok):
    state = make(tok, stop=["abcde"])
    deltas = run(state, ids(tok, "xab", "cd", "ef", "!"))
    assert texts(deltas) == ["x", "", ""]
    assert finish(deltas) == (True, "stop", "abcde")
    assert state.text == "x" and state.num_output_tokens == 3


def test_stop_string_inside_one_token_drops_what_follows(tok):
    state = make(tok, stop=["STOP"])
    deltas = run(state, ids(tok, "foo STOP bar", "!"))
    assert texts(deltas) == ["foo "]
    assert finish(deltas) == (True, "stop", "STOP")


def test_include_stop_str_in_output(tok):
    state = make(tok, stop=["STOP"], include_stop_str_in_output=True)
    assert texts(run(state, ids(tok, "foo STOP bar"))) == ["foo STOP"]
    assert state.stop_reason == "STOP"
    # across tokens: nothing is held back (the stop string is sent anyway), the cut is after it
    state = make(tok, stop=["lo w"], include_stop_str_in_output=True)
    deltas = run(state, ids(tok, "Hel", "lo", " wor", "ld"))
    assert texts(deltas) == ["Hel", "lo", " w"]
    assert finish(deltas) == (True, "stop", "lo w") and state.text == "Hello w"


@pytest.mark.parametrize("stops", [("world", "lo"), ("lo", "world")])
def test_several_stop_strings_earliest_wins(tok, stops):
    state = make(tok, stop=list(stops))
    deltas = run(state, ids(tok, "Hello world"))
    assert texts(deltas) == ["Hel"] and state.stop_reason == "lo"


def test_stop_that_completes_first_wins_over_one_still_open(tok):
    # "abcd!" is still a candidate when "cd" completes: "cd" ends the request, and the "ab"
    # held for "abcd!" goes out with the final delta
    state = make(tok, stop=["abcd!", "cd"])
    deltas = run(state, ids(tok, "xab", "cd", "!"))
    assert texts(deltas) == ["x", "ab"] and state.stop_reason == "cd" and state.text == "xab"
    state = make(tok, stop=["abcd!", "bc"], include_stop_str_in_output=True)
    deltas = run(state, ids(tok, "xab", "cd", "!"))
    assert state.text == "xabc" and state.stop_reason == "bc"


def test_stop_strings_starting_together_the_shorter_wins(tok):
    state = make(tok, stop=["abcd", "ab"], include_stop_str_in_output=True)
    run(state, ids(tok, "xabcd"))
    assert state.text == "xab" and state.stop_reason == "ab"


def test_held_text_released_when_the_match_fails(tok):
    state = make(tok, stop=["abc"])
    deltas = run(state, ids(tok, "xa", "b", "d", "!"))
    assert texts(deltas) == ["x", "", "abd", "!"]
    assert not state.finished and state.text == "xabd!"


def test_held_text_released_at_max_tokens(tok):
    state = make(tok, max_tokens=2, stop=["abc"])
    deltas = run(state, ids(tok, "xa", "b", "c"))
    assert texts(deltas) == ["x", "ab"]
    assert finish(deltas) == (True, "length", None) and state.text == "xab"


def test_held_text_released_at_eos(tok):
    state = make(tok, stop=["abc"])
    deltas = run(state, ids(tok, "xa", "b", EOS))
    assert texts(deltas) == ["x", "", "ab"]
    assert finish(deltas) == (True, "stop", None)


def test_stop_string_on_the_last_allowed_token_is_a_stop(tok):
    state = make(tok, max_tokens=2, stop=["ab"])
    deltas = run(state, ids(tok, "xa", "b"))
    assert finish(deltas) == (True, "stop", "ab") and state.text == "x"


def test_single_character_stop_is_never_held(tok):
    state = make(tok, stop=["!"])
    deltas = run(state, ids(tok, "Hel", "lo", "!"))
    assert texts(deltas) == ["Hel", "lo", ""] and state.stop_reason == "!"


# --- EOS, stop token ids, min_tokens, max_tokens ----------------------------------------------


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_eos_stops_and_its_text_is_not_output(tok, skip_special_tokens):
    state = make(tok, skip_special_tokens=skip_special_tokens)
    deltas = run(state, ids(tok, "Hel", "lo", EOS, "!"))
    assert finish(deltas) == (True, "stop", None)
    assert state.text == "Hello" and state.token_ids == ids(tok, "Hel", "lo", EOS)


def test_any_of_several_eos_ids_stops(tok):
    state = make(tok, eos=ids(tok, EOS, SEP))
    deltas = run(state, ids(tok, "Hel", SEP, "lo"))
    assert finish(deltas) == (True, "stop", None) and state.text == "Hel"


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_ignore_eos_runs_to_max_tokens(tok, skip_special_tokens):
    state = make(tok, max_tokens=4, ignore_eos=True, skip_special_tokens=skip_special_tokens)
    deltas = run(state, ids(tok, "Hel", EOS, "lo", EOS, "!"))
    assert finish(deltas) == (True, "length", None) and len(deltas) == 4
    assert state.text == ("Hello" if skip_special_tokens else "Hel<eos>lo<eos>")


def test_stop_token_ids(tok):
    newline = ids(tok, "\n")[0]
    state = make(tok, stop_token_ids=[newline])
    deltas = run(state, ids(tok, "yes", "\n", "!"))
    # like vLLM, the stop token's text is not output (it is in token_ids)
    assert finish(deltas) == (True, "stop", newline) and texts(deltas) == ["yes", ""]
    assert state.token_ids == ids(tok, "yes", "\n") and state.stop_reason == newline
    state = make(tok, stop_token_ids=[newline], include_stop_str_in_output=True)
    deltas = run(state, ids(tok, "yes", "\n", "!"))
    assert finish(deltas) == (True, "stop", newline) and state.text == "yes\n"


def test_stop_token_id_that_is_also_eos_reports_the_id(tok):
    eos = ids(tok, EOS)[0]
    state = make(tok, stop_token_ids=[eos])
    assert finish(run(state, ids(tok, "yes", EOS))) == (True, "stop", eos)


def test_stop_token_releases_held_text(tok):
    state = make(tok, stop=["abc"], stop_token_ids=ids(tok, "\n"))
    deltas = run(state, ids(tok, "xa", "\n"))
    assert texts(deltas) == ["x", "a"] and state.stop_reason == ids(tok, "\n")[0]


def test_min_tokens_delays_eos_and_stop_token_ids(tok):
    newline = ids(tok, "\n")[0]
    state = make(tok, min_tokens=2, stop_token_ids=[newline])
    deltas = run(state, ids(tok, EOS, "\n", "yes", EOS))
    assert finish(deltas) == (True, "stop", None) and len(deltas) == 4
    assert state.text == "\nyes"  # the early EOS is a skipped special token, "\n" plain text
    state = make(tok, min_tokens=2, stop_token_ids=[newline])
    deltas = run(state, ids(tok, "yes", "\n", "\n"))
    assert finish(deltas) == (True, "stop", newline) and state.text == "yes\n"


def test_min_tokens_delays_stop_strings(tok):
    # the first min_tokens tokens cannot complete a stop string ...
    state = make(tok, min_tokens=1, stop=["ab"])
    deltas = run(state, ids(tok, "xab", "c", "ab", "!"))
    assert finish(deltas) == (True, "stop", "ab") and state.text == "xabc"
    # ... but a later token can complete one that began in their text (as in vLLM)
    state = make(tok, min_tokens=1, stop=["ab"])
    deltas = run(state, ids(tok, "xa", "b"))
    assert texts(deltas) == ["x", ""] and finish(deltas) == (True, "stop", "ab")
    state = make(tok, min_tokens=2, stop=["ab"])
    deltas = run(state, ids(tok, "x", "ab", "ab"))
    assert finish(deltas) == (True, "stop", "ab") and state.text == "xab" and len(deltas) == 3


def test_max_tokens_one(tok):
    state = make(tok, max_tokens=1, stop=["Hello"])
    deltas = run(state, ids(tok, "Hel", "lo"))
    assert texts(deltas) == ["Hel"] and finish(deltas) == (True, "length", None)
    state = make(tok, max_tokens=1)
    assert finish(run(state, ids(tok, EOS))) == (True, "stop", None) and state.text == ""
    state = make(tok, max_tokens=1, min_tokens=1)
    assert finish(run(state, ids(tok, EOS))) == (True, "length", None)


def test_extend_takes_ids_up_to_the_finish(tok):
    pieces = ids(tok, "Hel", "lo", " wor", "ld", "!")
    one = make(tok, stop=["lo w"])
    run(one, pieces)
    many = make(tok, stop=["lo w"])
    first = many.extend(pieces[:2])
    second = many.extend(pieces[2:])
    assert first.text == "Hel" and first.token_ids == pieces[:2] and not first.finished
    assert second.token_ids == pieces[2:3] and second.finished and second.stop_reason == "lo w"
    assert many.text == one.text and many.token_ids == one.token_ids


def test_append_after_finish_is_refused(tok):
    state = make(tok, max_tokens=1)
    state.append(ids(tok, "x")[0])
    with pytest.raises(AssertionError):
        state.append(ids(tok, "x")[0])


def test_unfinished_state(tok):
    state = make(tok)
    assert (state.text, state.token_ids, state.finished, state.finish_reason, state.stop_reason) == (
        "", [], False, None, None)
    delta = state.append(ids(tok, "yes")[0])
    assert delta == OutputDelta("yes", ids(tok, "yes"), False, None, None)


# --- UTF-8 ---------------------------------------------------------------------------------------


def test_multibyte_characters_split_across_tokens(tok):
    split = [b"\xf0\x9f", b"\x98\x80", b"\xe4", b"\xb8\xad", b"\xc3", b"\xa9"]
    state = make(tok)
    deltas = run(state, ids(tok, "ok ", *split))
    assert texts(deltas) == ["ok ", "", "😀", "", "中", "", "é"]
    # a stop string that is a multi-byte character, its bytes in two tokens
    state = make(tok, stop=["中"])
    deltas = run(state, ids(tok, "ok ", b"\xf0\x9f", b"\x98\x80", b"\xe4", b"\xb8\xad", " done"))
    assert texts(deltas) == ["ok ", "", "😀", "", ""] and state.text == "ok 😀"
    # half a character never matches, nor streams, and comes out whole at the end
    state = make(tok, max_tokens=3, stop=["é!"])
    deltas = run(state, ids(tok, "ok ", b"\xc3", b"\xa9"))
    assert texts(deltas) == ["ok ", "", "é"] and state.finish_reason == "length"


def test_incomplete_character_at_the_end_is_flushed(tok):
    state = make(tok, max_tokens=2)
    deltas = run(state, ids(tok, "ok ", b"\xf0\x9f"))
    assert texts(deltas) == ["ok ", "\ufffd"] and state.text == tok.decode(ids(tok, "ok ", b"\xf0\x9f"))
    state = make(tok)
    deltas = run(state, ids(tok, "ok ", b"\xe4", EOS))
    assert texts(deltas) == ["ok ", "", "\ufffd"] and state.finish_reason == "stop"


# --- property: the deltas are the full decode cut at the first stop string ------------------------

ALPHABET = "ab c\n!😀中é"
CORPUS = ["ab abc cab ba\n", "a b c ab bc ca", "😀中é 中中 éé 😀😀", "abc!😀 中é!", "c\nb\na ab!"] * 20


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    """A byte-level BPE trained on ``CORPUS``: its tokens span several characters, and
    :func:`byte_ids` splits characters into byte tokens. (No token holds both a whole character
    and part of the next one, so the incremental decoder releases every prefix's text at once
    and the full-decode reference holds token for token; see the real-tokenizer test.)"""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[EOS], show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    return Tokenizer(backend, tokenizer_config={"eos_token": EOS})


def byte_ids(tok: Tokenizer, text: str) -> list[int]:
    return [tok.token_to_id(B2U[b]) for b in text.encode()]


def prefix_texts(tok: Tokenizer, token_ids: list[int], incremental: bool) -> Iterator[str]:
    """The text of each prefix of ``token_ids``: by full decode, or as far as an incremental
    decoder has released it (flushed at the last id)."""
    if not incremental:
        for k in range(1, len(token_ids) + 1):
            yield tok.decode(token_ids[:k])
        return
    detok, text = tok.detokenizer(), ""
    for k, token_id in enumerate(token_ids, 1):
        text += detok.step(token_id) + (detok.flush() if k == len(token_ids) else "")
        yield text


def reference(tok: Tokenizer, token_ids: list[int], stops: list[str], include: bool,
              incremental: bool = False) -> tuple[str, str | None, int]:
    """The first prefix whose text contains a stop string, cut at its first occurrence (the
    earliest, the shorter on a tie): the text, the stop string, the ids taken."""
    for k, decoded in enumerate(prefix_texts(tok, token_ids, incremental), 1):
        hits = [(decoded.find(s), len(s), s) for s in stops if s in decoded]
        if hits:
            start, length, stop = min(hits)
            return decoded[: start + length if include else start], stop, k
    return tok.decode(token_ids), None, len(token_ids)


def check_against_reference(tok: Tokenizer, token_ids: list[int], stops: list[str], include: bool,
                            incremental: bool = False) -> None:
    state = OutputState(tok, SamplingParams(max_tokens=len(token_ids), stop=stops,
                                            include_stop_str_in_output=include),
                        [], frozenset(), len(token_ids))
    detok = tok.detokenizer()  # what the text is before stop strings, step by step
    decoded = ""
    deltas = []
    for token_id in token_ids:
        delta = state.append(token_id)
        deltas.append(delta.text)
        streamed = "".join(deltas)
        if delta.finished:
            break
        decoded += detok.step(token_id)
        # streamed text is decoded text; what is held back could still begin a stop string
        assert decoded.startswith(streamed)
        held = len(decoded) - len(streamed)
        assert held <= (0 if include else max(map(len, stops)) - 1)
        if held:
            assert any(s.startswith(decoded[len(streamed):]) for s in stops)
        if not include:
            assert not any(s in streamed for s in stops)
    text, stop, taken = reference(tok, token_ids, stops, include, incremental)
    assert "".join(deltas) == state.text == text
    assert state.finished and state.num_output_tokens == taken == len(deltas)
    assert state.finish_reason == ("stop" if stop else "length") and state.stop_reason == stop


@st.composite
def token_stream(draw, tok: Tokenizer) -> tuple[str, list[int]]:
    """A text and ids that decode to it, chunks of it BPE-encoded or byte by byte (so that
    characters are split across tokens)."""
    text = draw(st.text(alphabet=ALPHABET, min_size=1, max_size=40))
    token_ids: list[int] = []
    rest = text
    while rest:
        n = draw(st.integers(1, len(rest)))
        chunk, rest = rest[:n], rest[n:]
        token_ids += byte_ids(tok, chunk) if draw(st.booleans()) else tok.encode(chunk)
    assert tok.decode(token_ids) == text
    return text, token_ids


@st.composite
def stop_strings(draw, text: str) -> list[str]:
    substrings = st.tuples(st.integers(0, len(text) - 1), st.integers(1, 6)).map(
        lambda t: text[t[0]: t[0] + t[1]])
    return draw(st.lists(st.one_of(substrings, st.text(alphabet=ALPHABET, min_size=1, max_size=5)),
                         min_size=1, max_size=4))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_deltas_are_the_decode_cut_at_the_first_stop(bpe, data):
    text, token_ids = data.draw(token_stream(bpe))
    stops = data.draw(stop_strings(text))
    check_against_reference(bpe, token_ids, stops, data.draw(st.booleans()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_ids_against_the_reference(bpe, data):
    """Arbitrary ids, invalid UTF-8 included; stop strings without U+FFFD (the decoder's
    stand-in for an incomplete character, which a later token may complete). The reference is
    the incremental one (as for the real tokenizers): in an arbitrary sequence a stray lead
    byte can make a token complete one character and start the next (e.g. ``Â`` then
    ``¸Ń``), so a full decode of the prefix shows a character the incremental decoder rightly
    holds back until the next one completes, and the stop is seen a token later."""
    token_ids = data.draw(st.lists(st.integers(0, bpe.vocab_size - 1), min_size=1, max_size=30))
    decoded = bpe.decode(token_ids) or "a"
    stops = [s for s in data.draw(stop_strings(decoded)) if "\ufffd" not in s] or ["a"]
    check_against_reference(bpe, token_ids, stops, data.draw(st.booleans()), incremental=True)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_extend_equals_append(bpe, data):
    text, token_ids = data.draw(token_stream(bpe))
    stops = data.draw(stop_strings(text))
    include = data.draw(st.booleans())

    def new() -> OutputState:
        params = SamplingParams(max_tokens=len(token_ids), stop=stops, include_stop_str_in_output=include)
        return OutputState(bpe, params, [], frozenset(), len(token_ids))

    one, many = new(), new()
    for token_id in token_ids:
        if one.append(token_id).finished:
            break
    rest = list(token_ids)
    while rest and not many.finished:
        n = data.draw(st.integers(1, len(rest)))
        delta = many.extend(rest[:n])
        assert len(delta.token_ids) == n or delta.finished
        rest = rest[n:]
    assert (many.text, many.token_ids, many.finish_reason, many.stop_reason) == (
        one.text, one.token_ids, one.finish_reason, one.stop_reason)


# --- real tokenizers (slow) -----------------------------------------------------------------------

REAL = ["smollm2", "gemma3", "qwen3"]
UTF8_SAMPLES = ["价格是😀100元，谢谢", "emoji 👍🏽 then 🇫🇷 and 中文字符", "日本語のテキスト😀 ok", "naïve 😀😀 café",
                "rare: goose 🪿 and 𠜎ꙮ 🫨!"]  # the last splits on every tokenizer, Gemma's included


@pytest.fixture(scope="module", params=REAL)
def real(request) -> Tokenizer:
    from infer_core.testing import fixtures

    path = {"smollm2": fixtures.smollm2_135m_instruct, "gemma3": fixtures.gemma3_270m,
            "qwen3": fixtures.qwen3_tokenizer}[request.param]()
    return Tokenizer.from_dir(path)


def real_ids(tok: Tokenizer, text: str) -> list[int]:
    token_ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(token_ids) == unicodedata.normalize("NFC", text) == text
    return token_ids


@pytest.mark.slow
@pytest.mark.parametrize("text", UTF8_SAMPLES)
def test_real_multibyte_text_streams_whole_characters(real, text):
    token_ids = real_ids(real, text)
    state = OutputState(real, SamplingParams(max_tokens=len(token_ids)), [], frozenset(), len(token_ids))
    deltas = run(state, token_ids)
    assert state.text == text and state.finish_reason == "length"
    assert not any("\ufffd" in d.text for d in deltas)


@pytest.mark.slow
def test_real_tokenizers_split_characters(real):
    """The samples are meaningful: some of their characters span several tokens."""
    split = [t for s in UTF8_SAMPLES for t in real_ids(real, s) if "\ufffd" in real.decode([t])]
    split += [t for s in UTF8_SAMPLES for t in real_ids(real, s) if t in real.byte_fallback_ids]
    assert split


@pytest.mark.slow
@pytest.mark.parametrize("text", UTF8_SAMPLES)
@pytest.mark.parametrize("include", [False, True])
def test_real_multibyte_stop_strings(real, text, include):
    token_ids = real_ids(real, text)
    for stop in ["😀", "中文", "谢", "🇫🇷", "é", "ok", "👍🏽 then", "🪿", "𠜎ꙮ", "ꙮ 🫨", "🫨!"]:
        if stop not in text:
            continue
        params = SamplingParams(max_tokens=len(token_ids), stop=[stop], include_stop_str_in_output=include)
        state = OutputState(real, params, [], frozenset(), len(token_ids))
        deltas = run(state, token_ids)
        cut = text.find(stop) + (len(stop) if include else 0)
        assert state.text == text[:cut] and state.stop_reason == stop, (stop, texts(deltas))
        assert not any("\ufffd" in d.text for d in deltas)
        if not include:
            assert stop not in state.text


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_real_random_text_against_the_reference(real, data):
    text = data.draw(st.text(alphabet="ab c\n😀中文é👍🏽.🪿𠜎ꙮ", min_size=1, max_size=30))
    token_ids = real.encode(text, add_special_tokens=False)
    if not token_ids:
        return
    stops = data.draw(stop_strings(real.decode(token_ids) or "a"))
    stops = [s for s in stops if "\ufffd" not in s] or ["a"]
    # The decoder releases a token's text only once it no longer ends in part of a character
    # (and Gemma's byte tokens only when their run ends), so a stop string is seen at the token
    # that releases it: the reference decodes prefixes incrementally here.
    check_against_reference(real, token_ids, stops, data.draw(st.booleans()), incremental=True)


@pytest.mark.slow
def test_real_eos_and_prompt_context(real):
    prompt = real.encode("The answer is", add_special_tokens=False)
    token_ids = real.encode(" yes 😀", add_special_tokens=False)
    eos = real.eos_token_ids[0]
    state = OutputState(real, SamplingParams(max_tokens=50), prompt, frozenset(real.eos_token_ids), 50)
    deltas = run(state, [*token_ids, eos])
    assert finish(deltas) == (True, "stop", None)
    full = real.decode([*prompt, *token_ids])
    assert full.endswith(state.text) and state.text.endswith("yes 😀")
