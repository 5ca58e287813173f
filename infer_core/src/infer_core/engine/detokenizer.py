"""Per-request output processing: sampled ids in, streamable text deltas and the finish out.

One :class:`OutputState` per request. :meth:`OutputState.append` takes the token the sampler
chose, detokenizes it incrementally (UTF-8 safe, through
:class:`~infer_core.loader.detokenizer.IncrementalDetokenizer`), applies the stop rules and
returns an :class:`OutputDelta`: the text that is safe to send now and, on the last token, why
the request finished. The concatenated deltas are always :attr:`OutputState.text`.

The rules (vLLM's, with the choices below where vLLM is unclear or differs):

- A token in ``stop_token_ids`` ends the request with ``"stop"`` and ``stop_reason`` = that id;
  any of the EOS ids does too, with ``stop_reason=None``, unless ``ignore_eos``. A token that is
  both an EOS id and a stop token id reports the id (the user asked for it by name).
- Like vLLM, the stopping token's text is left out of the output text, unless
  ``include_stop_str_in_output``: then it is decoded like any token (an EOS token is still
  hidden by ``skip_special_tokens``). The stopping token is in :attr:`OutputState.token_ids`.
- ``min_tokens``: stop tokens and stop strings count only from the ``min_tokens + 1``-th output
  token on (the sampler masks stop tokens until ``min_tokens`` outputs exist; a stop token that
  gets through anyway is treated as text). As in vLLM, a stop string must *end* in the text of
  such a token but may begin in earlier text, and a stop string wholly inside the text of the
  first ``min_tokens`` tokens never matches.
- Stop strings are matched across token boundaries. Without ``include_stop_str_in_output`` the
  longest tail of the text that is a proper prefix of a stop string is held back (never
  streamed) until a later token decides it; with it nothing is held back (vLLM does the same:
  the stop string would be sent anyway, and the cut is after it). Several stop strings: the
  match that starts earliest in the text wins, the shorter one on a tie (vLLM takes the first
  in list order that matches). The text is cut right before the match (after it with
  ``include_stop_str_in_output``); what follows it, in the same token too, is dropped.
- ``max_tokens`` (the effective limit the engine computed) ends with ``"length"``, unless the
  last token also stops the request: a stop token or stop string there reports ``"stop"``.
- On any finish, the text still held back (a partial stop string that never completed, or
  bytes the incremental decoder was waiting on) goes out in the final delta.

Checking a token costs the length of its new text plus ``max(len(stop)) - 1`` characters of
tail, never the whole text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infer_core.request import SamplingParams

if TYPE_CHECKING:
    from infer_core.loader.tokenizer import Tokenizer

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(slots=True)  # not frozen: one is built per token, and a frozen __init__ costs ~1 µs more
class OutputDelta:
    """What one :meth:`OutputState.append` (or :meth:`~OutputState.extend`) added.

    ``text`` is the new text safe to stream now; ``token_ids`` the ids taken in this call (all
    of them, except that ids after the one that finished the request are not taken).
    """

    text: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class OutputState:
    """The output of one request: its generated ids, its text, whether and why it finished."""

    __slots__ = ("_detok", "_eos", "_finish_reason", "_first_chars", "_hold", "_include",
                 "_max_stop", "_max_tokens", "_min_tokens", "_sent", "_stop", "_stop_ids",
                 "_stop_reason", "_text", "_token_ids")

    def __init__(
        self,
        tokenizer: Tokenizer,
        params: SamplingParams,
        prompt_token_ids: Sequence[int],
        eos_token_ids: Iterable[int],
        max_tokens: int,
    ) -> None:
        self._detok = tokenizer.detokenizer(
            skip_special_tokens=params.skip_special_tokens, prompt_ids=prompt_token_ids,
        )
        self._stop: tuple[str, ...] = tuple(dict.fromkeys(s for s in params.stop if s))
        self._stop_ids = frozenset(params.stop_token_ids)
        self._eos = frozenset() if params.ignore_eos else frozenset(eos_token_ids)
        self._min_tokens = params.min_tokens
        self._max_tokens = max_tokens
        self._include = params.include_stop_str_in_output
        self._max_stop = max((len(s) for s in self._stop), default=0)
        # only a proper prefix of a stop string is held back, and only when it would be cut
        self._hold = bool(self._stop) and not self._include and self._max_stop > 1
        self._first_chars = frozenset(s[0] for s in self._stop)
        self._token_ids: list[int] = []
        self._text = ""  # decoded output text; [:_sent] streamed, the rest held back
        self._sent = 0
        self._finish_reason: str | None = None
        self._stop_reason: int | str | None = None

    # --- state ---------------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The output text so far: the concatenation of every delta's text."""
        return self._text if self._sent == len(self._text) else self._text[: self._sent]

    @property
    def token_ids(self) -> list[int]:
        """The output ids taken so far, the stopping token included (do not mutate)."""
        return self._token_ids

    @property
    def num_output_tokens(self) -> int:
        return len(self._token_ids)

    @property
    def finished(self) -> bool:
        return self._finish_reason is not None

    @property
    def finish_reason(self) -> str | None:
        return self._finish_reason

    @property
    def stop_reason(self) -> int | str | None:
        return self._stop_reason

    # --- input ---------------------------------------------------------------------------------

    def append(self, token_id: int) -> OutputDelta:
        """Take one sampled id: the text it makes safe to stream, and whether it finished."""
        return self.extend((token_id,))

    def extend(self, token_ids: Iterable[int]) -> OutputDelta:
        """Take several ids of one step in order; those after the one that finishes the
        request are not taken (``len(delta.token_ids)`` says how many were)."""
        assert self._finish_reason is None, "output appended to a finished request"
        sent = self._sent
        taken = []
        for token_id in token_ids:
            taken.append(token_id)
            if self._step(token_id):
                break
        if self._finish_reason is not None:
            self._sent = len(self._text)
        elif self._hold:
            self._sent = len(self._text) - self._held_length()
        else:
            self._sent = len(self._text)
        return OutputDelta(self._text[sent: self._sent], taken, self._finish_reason is not None,
                           self._finish_reason, self._stop_reason)

    @property
    def needs_text_to_stop(self) -> bool:
        """Whether a finish can depend on the text (stop strings): if not, :meth:`token_rule`
        decides every finish from the ids alone, before any detokenization."""
        return bool(self._stop)

    def token_rule(self, token_id: int, n: int) -> tuple[str, int | None] | None:
        """The finish that id ``token_id`` as the ``n``-th output token makes by the id rules
        alone — a stop token id, an EOS id, ``max_tokens`` — as ``(finish_reason,
        stop_reason)``, or None. Stop strings may still finish a request earlier."""
        counts = n > self._min_tokens  # stop tokens and stop strings count from here on
        if counts and token_id in self._stop_ids:
            return FINISH_STOP, token_id
        if counts and token_id in self._eos:
            return FINISH_STOP, None
        if n >= self._max_tokens:
            return FINISH_LENGTH, None
        return None

    def _step(self, token_id: int) -> bool:
        """Take one id; True when it finished the request."""
        self._token_ids.append(token_id)
        n = len(self._token_ids)
        counts = n > self._min_tokens  # stop tokens and stop strings count from here on
        rule = self.token_rule(token_id, n)
        reason: str | None = None
        stop_reason: int | str | None = None
        if rule is not None and rule[0] == FINISH_STOP:
            reason, stop_reason = rule
        # the stopping token's text is not output (vLLM), unless include_stop_str_in_output
        new = self._detok.step(token_id) if reason is None or self._include else ""
        if reason is None and rule is not None:
            reason = FINISH_LENGTH
        if reason is not None:
            new += self._detok.flush()
        if new:
            start = len(self._text)
            self._text += new
            if counts and self._stop:
                match = self._find_stop(start)
                if match is not None:
                    cut, stop = match
                    assert cut >= self._sent, "a streamed delta went past a stop string"
                    self._text = self._text[:cut]
                    reason, stop_reason = FINISH_STOP, stop
        if reason is None:
            return False
        self._finish_reason, self._stop_reason = reason, stop_reason
        return True

    def _find_stop(self, start: int) -> tuple[int, str] | None:
        """The earliest stop string that ends in ``text[start:]``: where to cut, and which."""
        text = self._text
        best: tuple[int, int, str] | None = None
        for stop in self._stop:
            # a match must end in the new text: earlier ones were checked (or don't count)
            i = text.find(stop, max(start - len(stop) + 1, 0))
            if i >= 0 and (best is None or (i, len(stop)) < best[:2]):
                best = (i, len(stop), stop)
        if best is None:
            return None
        i, length, stop = best
        return (i + length if self._include else i), stop

    def _held_length(self) -> int:
        """The length of the longest unsent tail of the text that a stop string begins with."""
        text = self._text
        end = len(text)
        first = self._first_chars
        for i in range(max(self._sent, end - self._max_stop + 1), end):
            if text[i] in first:
                tail = text[i:]
                if any(len(s) > len(tail) and s.startswith(tail) for s in self._stop):
                    return end - i
        return 0
