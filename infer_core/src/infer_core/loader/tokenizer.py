"""The tokenizer of a Hugging Face model directory, on the ``tokenizers`` library alone.

A model directory's tokenizer is ``tokenizer.json`` (the whole pipeline: normalizer,
pre-tokenizer, model, post-processor, decoder, added tokens) plus ``tokenizer_config.json``
(named special tokens, chat template), ``generation_config.json`` (the EOS ids generation stops
on) and, in older checkpoints, ``special_tokens_map.json``. :class:`Tokenizer` reads them the way
``transformers.AutoTokenizer`` does, so that ``encode`` gives the ids the model was trained
with; the tests hold it to ``AutoTokenizer`` on real tokenizers.

:class:`~infer_core.loader.detokenizer.IncrementalDetokenizer` (``Tokenizer.detokenizer()``)
turns generated ids into text deltas one token at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tokenizers
from tokenizers import AddedToken

from infer_core.errors import ModelLoadError, RequestError

if TYPE_CHECKING:
    from infer_core.loader.detokenizer import IncrementalDetokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
PROCESSOR_CHAT_TEMPLATE_FILE = "chat_template.json"

# The named special tokens of transformers (``SPECIAL_TOKENS_ATTRIBUTES``), in its order.
NAMED_SPECIAL_TOKENS = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)


def _read_json(path: Path, *, required: bool = False) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ModelLoadError(f"'{path.parent}' has no {path.name}.")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"'{path}' is not valid JSON ({exc}); restore it from the model's source.") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"'{path}' must hold a JSON object; restore it from the model's source.")
    return data


def _token_text(value: Any) -> str | None:
    """A special token as written in a config: a string, or a serialized ``AddedToken``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def read_chat_templates(model_dir: str | Path, tokenizer_config: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The chat templates of a model directory by name (``"default"`` is the main one).

    Same precedence as transformers: ``chat_template.jinja`` and
    ``additional_chat_templates/*.jinja`` win over the ``chat_template`` of
    ``tokenizer_config.json`` (a string, or a list of ``{"name", "template"}``). A processor's
    ``chat_template.json`` is read last, when nothing else has a template.
    """
    model_dir = Path(model_dir).expanduser()
    if tokenizer_config is None:
        tokenizer_config = _read_json(model_dir / TOKENIZER_CONFIG_FILE)
    files: dict[str, str] = {}
    if (model_dir / CHAT_TEMPLATE_FILE).is_file():
        files["default"] = (model_dir / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if (model_dir / CHAT_TEMPLATE_DIR).is_dir():
        for path in sorted((model_dir / CHAT_TEMPLATE_DIR).glob("*.jinja")):
            files[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if files:
        return files
    value = tokenizer_config.get("chat_template")
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):
        named = {}
        for entry in value:
            if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and isinstance(entry.get("template"), str):
                named[entry["name"]] = entry["template"]
        if named:
            return named
    processor = _read_json(model_dir / PROCESSOR_CHAT_TEMPLATE_FILE)
    if isinstance(processor.get("chat_template"), str):
        return {"default": processor["chat_template"]}
    return {}


def byte_fallback_ids(backend: tokenizers.Tokenizer) -> frozenset[int]:
    """The ids of the ``<0xNN>`` byte tokens when the decoder has a ``ByteFallback`` step
    (Gemma, Llama 2), else none. That step decodes a run of byte tokens all at once, and a run
    that is not valid UTF-8 becomes one U+FFFD per byte, earlier valid bytes included, so a
    streaming decoder must wait for the run to end."""
    if "ByteFallback" not in repr(backend.decoder):
        return frozenset()
    ids = (backend.token_to_id(f"<0x{b:02X}>") for b in range(256))
    return frozenset(i for i in ids if i is not None)


class Tokenizer:
    """A model's tokenizer: ``encode``/``decode``, special tokens, EOS ids and chat templates.

    Build it with :meth:`from_dir`. ``vocab_size`` counts every id, added tokens included (what
    ``len(AutoTokenizer)`` gives; transformers' ``.vocab_size`` leaves the added ones out).
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        tokenizer_config: Mapping[str, Any] | None = None,
        generation_config: Mapping[str, Any] | None = None,
        special_tokens_map: Mapping[str, Any] | None = None,
        model_config: Mapping[str, Any] | None = None,
        chat_templates: Mapping[str, str] | None = None,
        name: str = "tokenizer",
    ) -> None:
        self.backend = backend
        self.name = name
        config = dict(tokenizer_config or {})
        # As in transformers: special_tokens_map.json is a legacy file, read only when
        # tokenizer_config.json has no added_tokens_decoder, and then its values win.
        legacy = dict(special_tokens_map or {}) if "added_tokens_decoder" not in config else {}

        self.special_tokens: dict[str, str] = {}
        for key in NAMED_SPECIAL_TOKENS:
            text = _token_text(legacy[key]) if key in legacy else _token_text(config.get(key))
            if text is not None:
                self.special_tokens[key] = text
        extra: list[str] = []
        for key in ("additional_special_tokens", "extra_special_tokens"):
            for source in (config, legacy):
                value = source.get(key)
                values = value.values() if isinstance(value, Mapping) else value if isinstance(value, list) else ()
                for item in values:
                    text = _token_text(item)
                    if text is not None and text not in extra:
                        extra.append(text)
        self.extra_special_tokens: tuple[str, ...] = tuple(extra)

        # Like transformers, make sure every special token is an added, special token of the
        # backend (a no-op when tokenizer.json already has it so, the usual case).
        wanted = [*self.special_tokens.values(), *extra]
        present = {tok.content: tok for tok in backend.get_added_tokens_decoder().values()}
        missing = [t for t in dict.fromkeys(wanted) if t not in present or not present[t].special]
        if missing:
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])

        # split_special_tokens: special-token strings in a prompt are text, not control tokens.
        backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
        # tokenizer.json's post-processor alone decides what encode() adds (BOS for Llama 3 and
        # Gemma, nothing for Qwen). transformers 5 does the same: with a tokenizer.json it drops
        # add_bos_token / add_eos_token from tokenizer_config.json.
        self.generation_config = dict(generation_config or {})
        eos: list[int] = []
        stop_source = generation_config if generation_config else (model_config or {})
        for token_id in _as_id_list(stop_source.get("eos_token_id")):
            if token_id not in eos:
                eos.append(token_id)
        tok_eos = self._id_of("eos_token")
        if tok_eos is not None and tok_eos not in eos:
            eos.append(tok_eos)
        self.eos_token_ids: tuple[int, ...] = tuple(eos)

        self.chat_templates: dict[str, str] = dict(chat_templates or {})
        self.byte_fallback_ids = byte_fallback_ids(backend)
        self.special_token_ids: frozenset[int] = frozenset(
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
        )

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Tokenizer:
        """The tokenizer of a Hugging Face model (or tokenizer-only) directory."""
        model_dir = Path(model_dir).expanduser()
        path = model_dir / TOKENIZER_FILE
        if not path.is_file():
            raise ModelLoadError(
                f"'{model_dir}' has no {TOKENIZER_FILE}: infer reads tokenizers in the Hugging Face "
                f"'tokenizers' format only (with transformers installed, "
                f"AutoTokenizer.from_pretrained(...).save_pretrained('{model_dir}') writes one)."
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelLoadError(
                f"'{path}' could not be read by the tokenizers library ({exc}); "
                f"upgrade tokenizers or restore the file from the model's source."
            ) from exc
        config = _read_json(model_dir / TOKENIZER_CONFIG_FILE)
        return cls(
            backend,
            tokenizer_config=config,
            generation_config=_read_json(model_dir / GENERATION_CONFIG_FILE),
            special_tokens_map=_read_json(model_dir / SPECIAL_TOKENS_MAP_FILE),
            model_config=_read_json(model_dir / "config.json"),
            chat_templates=read_chat_templates(model_dir, config),
            name=str(model_dir),
        )

    # --- ids and tokens -----------------------------------------------------------------------

    def _id_of(self, key: str) -> int | None:
        text = self.special_tokens.get(key)
        return None if text is None else self.backend.token_to_id(text)

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    @property
    def unk_token(self) -> str | None:
        return self.special_tokens.get("unk_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._id_of("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        """The tokenizer's own EOS id; generation stops on any of :attr:`eos_token_ids`."""
        return self._id_of("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._id_of("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._id_of("unk_token")

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce, added tokens included (``len(AutoTokenizer)``)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def added_tokens(self) -> dict[int, str]:
        """Added tokens (special or not) by id, as ``tokenizer.json`` and the config declare them."""
        return {i: tok.content for i, tok in sorted(self.backend.get_added_tokens_decoder().items())}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.special_tokens.values(), *self.extra_special_tokens]))

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    @property
    def chat_template(self) -> str | None:
        """The model's default chat template, or ``None`` when it ships none."""
        return self.chat_templates.get("default")

    # --- encode / decode ----------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of ``text``; with ``add_special_tokens``, BOS/EOS as the model's tokenizer adds
        them. Encode a rendered chat prompt with ``add_special_tokens=False``: the template
        already wrote the BOS token."""
        if not isinstance(text, str):
            raise RequestError(f"the prompt must be a string, got {type(text).__name__}.")
        # encode_batch releases the GIL while it works (encode does not), so a server thread
        # tokenizing a long prompt does not stall the event loop or the engine thread
        return self.backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        for text in texts:
            if not isinstance(text, str):
                raise RequestError(f"every prompt must be a string, got {type(text).__name__}.")
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def detokenizer(self, *, skip_special_tokens: bool = True, prompt_ids: Sequence[int] = ()) -> IncrementalDetokenizer:
        """A fresh :class:`IncrementalDetokenizer` for one request."""
        from infer_core.loader.detokenizer import IncrementalDetokenizer

        return IncrementalDetokenizer(self, skip_special_tokens=skip_special_tokens, prompt_ids=prompt_ids)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eos_token_ids={list(self.eos_token_ids)})"
