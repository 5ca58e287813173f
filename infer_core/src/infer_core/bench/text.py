"""Text of an exact token count, for workloads that must send text (chat messages).

Prompts sent as token ids are exact by construction; chat messages are text, so W5 builds them
from whole-word tokens: words ``w`` whose ``" " + w`` is one token of the model's tokenizer.
A string of such space-separated words encodes to one token per word with byte-level BPE
(Llama 3, Qwen 3) and SentencePiece-style (Gemma) tokenizers alike, because pre-tokenization
splits at the spaces; every string is still checked by encoding it, and adjusted word by word
if a tokenizer merges across words.
"""

from __future__ import annotations

import random
import re

from infer_core.errors import InferError

WORD = re.compile(r"[a-z]{2,12}")
PREFIXES = ("Ġ", "▁", " ")  # byte-level BPE, SentencePiece, plain
MAX_CANDIDATES = 60_000  # ids scanned for words (the common words sit at low ids)
MAX_WORDS = 4096


class TextMaker:
    """Random text of exactly ``n`` tokens of ``tokenizer`` (an ``infer_core`` ``Tokenizer``)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.words = self._single_token_words()
        if not self.words:
            raise InferError(
                f"the tokenizer {tokenizer.name} has no whole-word tokens (' word' as one id), so "
                f"text of an exact token count cannot be built; use a BPE or SentencePiece "
                f"tokenizer (any Llama 3, Qwen 3 or Gemma 3 tokenizer)."
            )

    def _single_token_words(self) -> list[str]:
        tok = self.tokenizer
        words: list[str] = []
        for token_id in range(min(tok.vocab_size, MAX_CANDIDATES)):
            piece = tok.id_to_token(token_id) or ""
            prefix = next((p for p in PREFIXES if piece.startswith(p)), None)
            if prefix is None or not WORD.fullmatch(piece[len(prefix):]):
                continue
            word = piece[len(prefix):]
            if tok.encode(" " + word, add_special_tokens=False) == [token_id]:
                words.append(word)
                if len(words) >= MAX_WORDS:
                    break
        return words

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def text(self, n: int, rng: random.Random) -> str:
        """Space-led words, exactly ``n`` tokens long (checked)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        words = [rng.choice(self.words) for _ in range(n)]
        for _ in range(8):
            text = "".join(" " + w for w in words)
            have = self.count(text)
            if have == n:
                return text
            if have > n:
                del words[max(1, len(words) - (have - n)):]
            else:
                words.extend(rng.choice(self.words) for _ in range(n - have))
        raise InferError(
            f"could not build text of exactly {n} tokens with the tokenizer {self.tokenizer.name} "
            f"(it merges tokens across spaces); send token-id prompts instead."
        )
