"""Streaming detokenization for one request: generated ids in, UTF-8-safe text deltas out;
the concatenated deltas equal ``Tokenizer.decode`` of all the ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tokenizers

from infer_core.loader.tokenizer import Tokenizer, byte_fallback_ids

try:  # tokenizers >= 0.21 (prefill with ids= and list steps: >= 0.22)
    from tokenizers.decoders import DecodeStream
except ImportError:  # pragma: no cover - the floor of infer-core's requirement has it
    DecodeStream = None

# Prompt ids an IncrementalDetokenizer keeps as left context, so that the first generated
# token decodes as it does after the prompt (a leading space, a byte that continues a character).
CONTEXT_IDS = 8
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Streaming decode for one request: feed ids with :meth:`step`, get text deltas.

    A delta never ends in half a character: while the ids so far end in an incomplete UTF-8
    sequence (decoded as U+FFFD), ``step`` returns ``""`` and keeps them; the next ids complete
    it. With a byte-fallback decoder (Gemma) a run of ``<0xNN>`` byte tokens is held until a
    non-byte token ends it, because such a run decodes as a whole. :meth:`flush` at the end
    returns whatever is still held (a U+FFFD that no later token completed stays one, as in
    ``decode``). ``"".join(deltas) + flush()`` equals ``tokenizer.decode(ids)``.
    ``prompt_ids`` (their last few) are decoding context only: the first generated token decodes
    as it does after the prompt.

    Built on ``tokenizers.decoders.DecodeStream``; the rare sequence it cannot stream (its
    "invalid prefix" error) is decoded in full instead, so no id is lost.
    """

    __slots__ = ("_backend", "_byte_ids", "_context", "_held", "_pending", "_skip", "_skipped_ids",
                 "_stream", "text", "token_ids")

    def __init__(
        self, tokenizer: Tokenizer | tokenizers.Tokenizer, *, skip_special_tokens: bool = True,
        prompt_ids: Sequence[int] = (),
    ) -> None:
        if isinstance(tokenizer, Tokenizer):
            self._backend, self._byte_ids = tokenizer.backend, tokenizer.byte_fallback_ids
            specials = tokenizer.special_token_ids
        else:
            self._backend, self._byte_ids = tokenizer, byte_fallback_ids(tokenizer)
            specials = frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)
        self._skip = skip_special_tokens
        # decode drops skipped special tokens first, so they do not end a run of byte tokens
        self._skipped_ids = specials if self._byte_ids and skip_special_tokens else frozenset()
        self._context = list(prompt_ids)[-CONTEXT_IDS:]
        self._stream = self._new_stream(self._context)
        self._pending = False
        self._held: list[int] = []  # byte tokens not yet given to the stream
        self.token_ids: list[int] = []
        self.text = ""

    def _new_stream(self, context: list[int]) -> Any:
        if DecodeStream is None:  # pragma: no cover
            return None
        try:
            return DecodeStream(ids=context or None, skip_special_tokens=self._skip)
        except TypeError:  # pragma: no cover - tokenizers < 0.22 cannot prefill: decode in full
            return None

    def _decoded_so_far(self) -> str:
        """The text of all ids fed so far, by full decode (the slow path)."""
        ctx = self._context
        full = self._backend.decode(ctx + self.token_ids, skip_special_tokens=self._skip)
        base = self._backend.decode(ctx, skip_special_tokens=self._skip) if ctx else ""
        if ctx and full.startswith(base):
            return full[len(base):]
        return self._backend.decode(self.token_ids, skip_special_tokens=self._skip)

    def _catch_up(self, *, final: bool) -> str:
        """Decode everything in full (the slow path, after DecodeStream gave up)."""
        text = self._decoded_so_far()
        if not final and text.endswith(REPLACEMENT_CHAR):
            self._pending = True
            return ""
        self._pending = False
        self._held.clear()
        # A decoder that rewrites earlier text (none of the supported families' does) cannot
        # take back what was sent: send what follows the common prefix and carry on from there.
        common = 0
        for old, new in zip(self.text, text, strict=False):
            if old != new:
                break
            common += 1
        delta = text[common:]
        self.text = text
        self._stream = self._new_stream((self._context + self.token_ids)[-CONTEXT_IDS:])
        return delta

    def step(self, token_id: int) -> str:
        """Feed one generated id; the text it completes (possibly ``""``)."""
        self.token_ids.append(token_id)
        if token_id in self._byte_ids or (self._held and token_id in self._skipped_ids):
            self._held.append(token_id)
            return ""
        if self._stream is None:
            return self._catch_up(final=False)
        ids = [*self._held, token_id] if self._held else token_id
        self._held.clear()
        try:
            chunk = self._stream.step(self._backend, ids)
        except Exception:  # DecodeStream's "invalid prefix": decode in full until it can resume
            self._stream = None
            return self._catch_up(final=False)
        if chunk is None:
            self._pending = True
            return ""
        self._pending = False
        self.text += chunk
        return chunk

    def flush(self) -> str:
        """The text still held back at the end of the request (``""`` almost always)."""
        if not self._pending and not self._held and self._stream is not None:
            return ""
        return self._catch_up(final=True)
