"""Token log-probabilities in the two OpenAI shapes.

- completions: ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` (parallel lists;
  each ``top_logprobs`` entry maps token text to logprob: the chosen token and the
  ``logprobs`` most likely ones, as vLLM does; tokens that decode to the same text share a
  key, which keeps the chosen token's value, else the likelier one's);
- chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}``.

A token's text is the tokenizer's decoding of that one id (special tokens included); its
``bytes`` are that text's UTF-8 bytes, except for byte-fallback tokens (``<0xE2>``), whose
byte is exact. A token that is only part of a character decodes to U+FFFD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infer_core.loader.tokenizer import Tokenizer
from infer_core.request import Logprob


class TokenTexts:
    """Text and bytes of single token ids, memoized per server."""

    def __init__(self, tokenizer: Tokenizer, max_entries: int = 1 << 16) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}
        self._max = max_entries

    def get(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is not None:
            return hit
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        raw = list(text.encode("utf-8"))
        if token_id in self.tokenizer.byte_fallback_ids:
            piece = self.tokenizer.id_to_token(token_id) or ""
            if piece.startswith("<0x") and piece.endswith(">"):
                raw = [int(piece[3:-1], 16)]
        if len(self._cache) < self._max:
            self._cache[token_id] = (text, raw)
        return text, raw

    def text(self, token_id: int) -> str:
        return self.get(token_id)[0]


def completion_logprobs(texts: TokenTexts, logprobs: Sequence[Logprob], offset: int) -> dict[str, Any]:
    """Completions ``logprobs`` for ``logprobs``; ``offset`` is the text offset of the first."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for lp in logprobs:
        text = texts.text(lp.token_id)
        tokens.append(text)
        token_logprobs.append(lp.logprob)
        top = {text: lp.logprob}
        for token_id, value in lp.top:  # most likely first: keep that value for a shared text
            top.setdefault(texts.text(token_id), value)
        tops.append(top)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops,
            "text_offset": offsets}


def chat_logprobs(texts: TokenTexts, logprobs: Sequence[Logprob], top_n: int) -> dict[str, Any]:
    content = []
    for lp in logprobs:
        text, raw = texts.get(lp.token_id)
        top = []
        for token_id, value in lp.top[:top_n]:
            t, b = texts.get(token_id)
            top.append({"token": t, "logprob": value, "bytes": b})
        content.append({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content}
