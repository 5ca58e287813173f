"""The tokenizer loader against transformers' ``AutoTokenizer``: on tiny tokenizers made here,
and (marked slow) on the real SmolLM2, Gemma 3 and Qwen 3 tokenizers of
``infer_core.testing.fixtures``; streaming detokenization is checked to add up to ``decode``
and never to emit half a character."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infer_core.errors import ModelLoadError, RequestError
from infer_core.loader.detokenizer import IncrementalDetokenizer
from infer_core.loader.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

CORPUS = [
    "Hello world, hello tokenizer! The quick brown fox jumps over the lazy dog.",
    "中文字符 日本語のテキスト 한국어 문장", "emoji 😀👍🏽🇫🇷 👨‍👩‍👧 ok", "café naïve e\u0301 ñ",
    "  spaces\tand\nnewlines  ", "numbers 12345 67890 and code: def f(x): return x**2",
] * 10
TINY_SPECIALS = ["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>"]


def make_tiny_tokenizer(
    path: Path,
    *,
    bos_post_processor: bool = True,
    tokenizer_config: dict[str, Any] | None = None,
    generation_config: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """A byte-level BPE tokenizer trained on ``CORPUS`` (with special tokens) saved as a
    Hugging Face directory: tokenizer.json, tokenizer_config.json and optional extras."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=TINY_SPECIALS, show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    if bos_post_processor:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", backend.token_to_id("<s>"))],
        )
    path.mkdir(parents=True, exist_ok=True)
    backend.save(str(path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "tokenizer_class": "PreTrainedTokenizerFast"}
    config.update(tokenizer_config or {})
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    if generation_config is not None:
        (path / "generation_config.json").write_text(json.dumps(generation_config))
    for name, text in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def make_byte_fallback_tokenizer(path: Path) -> Path:
    """A Gemma-style tokenizer: SentencePiece-like BPE over "▁"-joined words whose unknown
    characters fall back to ``<0xNN>`` byte tokens, decoded by a ``ByteFallback`` step."""
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as Backend

    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "<pad>": 3}
    vocab.update({f"<0x{b:02X}>": 4 + b for b in range(256)})
    for piece in ["▁", "a", "b", "c", "▁a", "▁b", "ab", "▁ab", "é", "中"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "a"), ("▁", "b"), ("a", "b"), ("▁a", "b")]
    backend = Backend(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<bos>", "<eos>", "<pad>")])
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    path.mkdir(parents=True, exist_ok=True)
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }))
    return path


# --- text that stresses tokenizers ------------------------------------------------------------------

SAMPLES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. 1234567890!?",
    "emoji 😀 👍🏽 🇫🇷 👨‍👩‍👧‍👦 ❤️ 🤖✨",
    "中文字符和标点，日本語のテキスト。한국어 문장",
    "combining: e\u0301 a\u0308 n\u0303 \u1e9b\u0323 Z\u0351\u0352\u0353",
    "whitespace   runs\t\ttabs\n\n\nnewlines     \n  trailing   ",
    "   leading spaces",
    "",
    " ",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|><s><bos><eos><|begin_of_text|><start_of_turn><end_of_turn>",
    "mixed: café 😀 中文 e\u0301 <|im_end|> done",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\r\n",
]

EMOJI_SEQUENCES = ["😀", "👍🏽", "🇫🇷", "👨‍👩‍👧", "❤️", "🤖", "🏳️‍🌈", "✨"]
TEXT = st.lists(
    st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),  # ASCII
        st.sampled_from([" ", "  ", "\n", "\t", "\n\n"]),
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # CJK
        st.characters(min_codepoint=0x3040, max_codepoint=0x30FF),  # kana
        st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji
        st.characters(min_codepoint=0x0300, max_codepoint=0x036F),  # combining marks
        st.characters(min_codepoint=0x00C0, max_codepoint=0x024F),  # Latin accents
        st.sampled_from(EMOJI_SEQUENCES),
    ),
    max_size=40,
).map("".join)


def stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    deltas = [detok.step(i) for i in ids]
    deltas.append(detok.flush())
    return deltas


def check_stream(tokenizer: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> None:
    deltas = stream(tokenizer.detokenizer(skip_special_tokens=skip_special_tokens), ids)
    full = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    assert "".join(deltas) == full
    if "\ufffd" not in full:
        assert not any("\ufffd" in d for d in deltas), deltas


# --- tiny tokenizers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_tokenizer(
        tmp_path_factory.mktemp("tiny"),
        generation_config={"eos_token_id": [3, 0], "bos_token_id": 1},
    )


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> Tokenizer:
    return Tokenizer.from_dir(tiny_dir)


@pytest.fixture(scope="module")
def tiny_hf(tiny_dir):
    return transformers.AutoTokenizer.from_pretrained(str(tiny_dir))


@pytest.mark.parametrize("text", SAMPLES)
def test_tiny_encode_matches_transformers(tiny, tiny_hf, text):
    assert tiny.encode(text) == tiny_hf(text)["input_ids"]
    assert tiny.encode(text, add_special_tokens=False) == tiny_hf(text, add_special_tokens=False)["input_ids"]
    ids = tiny.encode(text)
    assert tiny.decode(ids) == tiny_hf.decode(ids, skip_special_tokens=True)
    assert tiny.decode(ids, skip_special_tokens=False) == tiny_hf.decode(ids, skip_special_tokens=False)


def test_tiny_special_tokens(tiny, tiny_hf):
    assert tiny.encode("hi")[0] == tiny.bos_token_id == tiny_hf.bos_token_id == 1
    assert tiny.eos_token == "<|im_end|>" and tiny.eos_token_id == tiny_hf.eos_token_id == 3
    assert tiny.pad_token_id == tiny_hf.pad_token_id == 0
    assert tiny.unk_token_id is None
    assert tiny.vocab_size == len(tiny_hf) == len(tiny)
    assert tiny.added_tokens == {i: t for i, t in enumerate(TINY_SPECIALS)}
    assert tiny.special_token_ids == {0, 1, 2, 3}
    assert tiny.special_tokens == {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    assert tiny.id_to_token(3) == "<|im_end|>" and tiny.token_to_id("<|im_start|>") == 2
    # special-token strings in text are control tokens, and decode drops them by default
    assert tiny.encode("<|im_start|>hi", add_special_tokens=False)[0] == 2
    assert tiny.decode(tiny.encode("<|im_start|>hi<|im_end|>")) == "hi"


def test_eos_ids_are_generation_config_and_tokenizer_eos(tiny):
    # generation_config.json's list first, in its order, then the tokenizer's EOS if missing
    assert tiny.eos_token_ids == (3, 0)


@pytest.mark.parametrize(
    ("generation_config", "model_config", "expected"),
    [
        ({"eos_token_id": 0}, None, (0, 3)),
        ({"eos_token_id": [0, 2, 3]}, None, (0, 2, 3)),
        (None, {"eos_token_id": [2, 0]}, (2, 0, 3)),  # no generation_config.json: config.json's
        ({"eos_token_id": 2}, {"eos_token_id": 0}, (2, 3)),  # generation_config.json wins
        (None, None, (3,)),
    ],
)
def test_eos_id_sources(tmp_path, generation_config, model_config, expected):
    files = {"config.json": json.dumps(model_config)} if model_config else {}
    path = make_tiny_tokenizer(tmp_path, generation_config=generation_config, files=files)
    assert Tokenizer.from_dir(path).eos_token_ids == expected


def test_no_post_processor_means_no_bos_as_in_transformers(tmp_path):
    """transformers 5 ignores add_bos_token when the directory has a tokenizer.json: the
    post-processor alone decides. So do we."""
    path = make_tiny_tokenizer(tmp_path, bos_post_processor=False, tokenizer_config={"add_bos_token": True})
    hf = transformers.AutoTokenizer.from_pretrained(str(path))
    assert Tokenizer.from_dir(path).encode("Hello world") == hf("Hello world")["input_ids"]
    assert Tokenizer.from_dir(path).encode("Hello world")[0] != 1


@pytest.mark.parametrize("added_tokens_decoder", [False, True])
def test_special_tokens_map_and_serialized_tokens(tmp_path, added_tokens_decoder):
    """special_tokens_map.json (legacy) is read only when tokenizer_config.json has no
    added_tokens_decoder, and then wins, as in transformers; tokens may be serialized objects."""
    config = {"bos_token": {"content": "<s>", "__type": "AddedToken"}, "eos_token": "<|im_end|>"}
    if added_tokens_decoder:
        config["added_tokens_decoder"] = {
            str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                     "normalized": False, "single_word": False}
            for i, t in enumerate(TINY_SPECIALS)
        }
    path = make_tiny_tokenizer(tmp_path, tokenizer_config=config, files={"special_tokens_map.json": json.dumps(
        {"eos_token": {"content": "<|endoftext|>"}, "unk_token": "<|endoftext|>"}
    )})
    tok, hf = Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path))
    assert tok.bos_token == hf.bos_token == "<s>"
    assert (tok.eos_token, tok.unk_token, tok.pad_token) == (hf.eos_token, hf.unk_token, hf.pad_token)
    assert tok.eos_token == ("<|im_end|>" if added_tokens_decoder else "<|endoftext|>")
    assert tok.encode("a<s>b") == hf("a<s>b")["input_ids"]


def test_missing_special_token_is_added_like_transformers(tmp_path):
    path = make_tiny_tokenizer(tmp_path, tokenizer_config={"additional_special_tokens": ["<tool>"]})
    tok, hf = Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path))
    assert tok.token_to_id("<tool>") == hf.convert_tokens_to_ids("<tool>") == 420
    assert tok.encode("a<tool>b") == hf("a<tool>b")["input_ids"]
    assert tok.all_special_tokens[-1] == "<tool>"


def test_split_special_tokens(tmp_path):
    path = make_tiny_tokenizer(tmp_path, tokenizer_config={"split_special_tokens": True})
    tok, hf = Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path))
    assert tok.encode("<|im_end|>x") == hf("<|im_end|>x")["input_ids"]
    assert 3 not in tok.encode("<|im_end|>x", add_special_tokens=False)


def test_chat_template_sources(tmp_path):
    assert Tokenizer.from_dir(make_tiny_tokenizer(tmp_path / "none")).chat_template is None
    string = make_tiny_tokenizer(tmp_path / "string", tokenizer_config={"chat_template": "A"})
    assert Tokenizer.from_dir(string).chat_template == "A"
    named = make_tiny_tokenizer(tmp_path / "named", tokenizer_config={"chat_template": [
        {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"},
    ]})
    assert Tokenizer.from_dir(named).chat_template == "D"
    assert Tokenizer.from_dir(named).chat_templates == {"tool_use": "T", "default": "D"}
    # a chat_template.jinja file wins over tokenizer_config.json, as in transformers
    jinja = make_tiny_tokenizer(tmp_path / "jinja", tokenizer_config={"chat_template": "A"},
                                files={"chat_template.jinja": "J"})
    assert Tokenizer.from_dir(jinja).chat_template == "J"
    assert Tokenizer.from_dir(jinja).chat_template == transformers.AutoTokenizer.from_pretrained(str(jinja)).chat_template
    extra = make_tiny_tokenizer(tmp_path / "extra", files={
        "chat_template.jinja": "J", "additional_chat_templates/rag.jinja": "R",
    })
    assert Tokenizer.from_dir(extra).chat_templates == {"default": "J", "rag": "R"}
    processor = make_tiny_tokenizer(tmp_path / "processor", files={"chat_template.json": json.dumps({"chat_template": "P"})})
    assert Tokenizer.from_dir(processor).chat_template == "P"


def test_missing_or_broken_files(tmp_path):
    with pytest.raises(ModelLoadError, match=r"has no tokenizer.json: infer reads tokenizers in the Hugging Face"):
        Tokenizer.from_dir(tmp_path)
    path = make_tiny_tokenizer(tmp_path / "bad")
    (path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"tokenizer_config.json' is not valid JSON"):
        Tokenizer.from_dir(path)
    (path / "tokenizer_config.json").write_text("{}")
    (path / "tokenizer.json").write_text('{"model": 1}')
    with pytest.raises(ModelLoadError, match="could not be read by the tokenizers library"):
        Tokenizer.from_dir(path)


def test_encode_rejects_non_strings(tiny):
    with pytest.raises(RequestError, match="the prompt must be a string, got list"):
        tiny.encode(["a"])
    assert tiny.encode_batch(["a b", "中"]) == [tiny.encode("a b"), tiny.encode("中")]


@pytest.mark.parametrize("text", SAMPLES)
def test_tiny_incremental_detokenization(tiny, text):
    ids = tiny.encode(text)
    check_stream(tiny, ids)
    check_stream(tiny, ids, skip_special_tokens=False)


def test_incremental_holds_partial_characters(tiny):
    ids = tiny.encode("😀", add_special_tokens=False)
    assert len(ids) > 1  # the tiny vocabulary spells the emoji in bytes
    detok = tiny.detokenizer()
    deltas = [detok.step(i) for i in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1) and deltas[-1] == "😀"
    assert detok.text == "😀" and detok.token_ids == ids


def test_incremental_flush_emits_what_never_completed(tiny):
    partial = tiny.encode("😀", add_special_tokens=False)[:1]
    detok = tiny.detokenizer()
    assert detok.step(partial[0]) == ""
    assert detok.flush() == tiny.decode(partial) == "\ufffd"
    assert detok.flush() == ""


def test_incremental_with_prompt_context(tiny):
    prompt = tiny.encode("Hello 中")
    generated = tiny.encode(" world 😀 again", add_special_tokens=False)
    detok = tiny.detokenizer(prompt_ids=prompt)
    assert "".join(stream(detok, generated)) == tiny.decode(generated) == " world 😀 again"


def test_incremental_falls_back_to_full_decode(tiny, monkeypatch):
    """If DecodeStream gives up ("invalid prefix"), the detokenizer decodes in full."""
    ids = tiny.encode("mixed: café 😀 中文 e\u0301 done")
    detok = tiny.detokenizer()

    class Broken:
        def step(self, backend, token_id):
            raise Exception("Invalid prefix encountered")

    deltas = [detok.step(ids[0])]
    detok._stream = Broken()
    deltas += [detok.step(i) for i in ids[1:]]
    deltas.append(detok.flush())
    assert "".join(deltas) == tiny.decode(ids)
    assert not any("\ufffd" in d for d in deltas)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_tiny_incremental_random_text(tiny, text):
    check_stream(tiny, tiny.encode(text))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 419), max_size=30))
def test_tiny_incremental_random_ids(tiny, ids):
    """Arbitrary ids, bytes that never form a character included: the deltas still add up."""
    check_stream(tiny, ids)


@pytest.fixture(scope="module")
def byte_fallback(tmp_path_factory) -> tuple[Tokenizer, Any]:
    path = make_byte_fallback_tokenizer(tmp_path_factory.mktemp("byte_fallback"))
    return Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_fallback_encode_and_stream(byte_fallback, text):
    tok, hf = byte_fallback
    assert tok.encode(text) == hf(text)["input_ids"]
    assert tok.decode(tok.encode(text)) == hf.decode(hf(text)["input_ids"], skip_special_tokens=True)
    check_stream(tok, tok.encode(text))


def test_byte_fallback_runs_are_decoded_whole(byte_fallback):
    """ByteFallback turns a byte run that is not UTF-8 into one U+FFFD per byte, the valid
    bytes before the bad one included: a run is held until a token that is not a byte (nor a
    skipped special token, which decode drops first) ends it."""
    tok, _ = byte_fallback
    zero, e4, b8, ad = (tok.token_to_id(f"<0x{b:02X}>") for b in (0x00, 0xE4, 0xB8, 0xAD))
    assert tok.byte_fallback_ids == frozenset(range(4, 260))
    assert tok.decode([zero, e4]) == "\ufffd\ufffd"  # not "\x00\ufffd"
    cases = [[zero, e4], [zero, 3, e4, tok.token_to_id("a")], [e4, b8, ad, tok.token_to_id("▁a")], [zero, tok.token_to_id("b")]]
    for ids in cases:
        for skip in (True, False):
            check_stream(tok, ids, skip_special_tokens=skip)
    detok = tok.detokenizer()
    assert [detok.step(i) for i in (e4, b8, ad)] == ["", "", ""]  # held: the run may go on
    assert detok.step(tok.token_to_id("b")) == "中b"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 269), max_size=16))
def test_byte_fallback_random_ids(byte_fallback, ids):
    tok, _ = byte_fallback
    check_stream(tok, ids)
    check_stream(tok, ids, skip_special_tokens=False)


# --- real tokenizers ---------------------------------------------------------------------------------

REAL = ["smollm2", "gemma3", "qwen3"]


def real_dir(name: str) -> Path:
    from infer_core.testing import fixtures

    return Path({
        "smollm2": fixtures.smollm2_135m_instruct,
        "gemma3": fixtures.gemma3_270m,
        "qwen3": fixtures.qwen3_tokenizer,
    }[name]())


@pytest.fixture(scope="module", params=REAL)
def real(request) -> tuple[str, Tokenizer, Any]:
    path = real_dir(request.param)
    return request.param, Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.mark.slow
def test_real_encode_and_decode_match_transformers(real):
    name, tok, hf = real
    for text in SAMPLES:
        ids = tok.encode(text)
        assert ids == hf(text)["input_ids"], (name, text)
        assert tok.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
        assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)


@pytest.mark.slow
def test_real_bos_and_round_trip(real):
    name, tok, _ = real
    ids = tok.encode("Hello world")
    if name == "qwen3":
        assert tok.bos_token_id is None and ids == tok.encode("Hello world", add_special_tokens=False)
    elif name == "gemma3":
        assert ids[0] == tok.bos_token_id == tok.token_to_id("<bos>")
    for text in SAMPLES:
        if name != "gemma3" and "<bos>" in text:
            continue
        decoded = tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=False)
        # Qwen normalizes to NFC; the others give the text back byte for byte
        expected = unicodedata.normalize("NFC", text) if name == "qwen3" else text
        assert decoded == expected, (name, text)


@pytest.mark.slow
def test_real_special_tokens_and_eos(real):
    name, tok, hf = real
    assert tok.vocab_size == len(hf)
    assert tok.bos_token_id == hf.bos_token_id and tok.pad_token_id == hf.pad_token_id
    assert tok.eos_token_id == hf.eos_token_id
    assert set(tok.added_tokens.items()) == {(i, t.content) for i, t in hf.added_tokens_decoder.items()}
    expected = {hf.eos_token_id}
    gen = Path(tok.name) / "generation_config.json"
    if gen.is_file():
        eos = transformers.GenerationConfig.from_pretrained(tok.name).eos_token_id
        expected |= set(eos if isinstance(eos, list) else [eos])
    assert set(tok.eos_token_ids) == expected
    end_of_turn = {"smollm2": "<|im_end|>", "gemma3": "<end_of_turn>", "qwen3": "<|im_end|>"}[name]
    assert tok.token_to_id(end_of_turn) in tok.eos_token_ids


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_real_encode_random_text(real, text):
    _, tok, hf = real
    assert tok.encode(text) == hf(text)["input_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("text", SAMPLES)
def test_real_incremental_samples(real, text):
    _, tok, _ = real
    check_stream(tok, tok.encode(text))
    check_stream(tok, tok.encode(text), skip_special_tokens=False)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_real_incremental_random_text(real, text):
    _, tok, _ = real
    check_stream(tok, tok.encode(text))


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_real_incremental_random_ids(real, data):
    _, tok, _ = real
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=24))
    check_stream(tok, ids)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_real_incremental_partial_bytes_and_specials(real, data):
    """Ids drawn mostly from tokens that are not whole characters (byte tokens, byte-level
    fragments) and special tokens: where streaming is hardest."""
    _, tok, _ = real
    pool = partial_tokens(tok)
    ids = data.draw(st.lists(st.one_of(st.sampled_from(pool), st.integers(0, tok.vocab_size - 1)), max_size=16))
    check_stream(tok, ids)
    check_stream(tok, ids, skip_special_tokens=False)


_PARTIAL: dict[str, list[int]] = {}


def partial_tokens(tok: Tokenizer) -> list[int]:
    if tok.name not in _PARTIAL:
        fragments = [i for i in range(min(tok.vocab_size, 5000)) if "\ufffd" in tok.decode([i])]
        _PARTIAL[tok.name] = sorted({*fragments, *tok.byte_fallback_ids, *sorted(tok.special_token_ids)[:64]})
    return _PARTIAL[tok.name]
