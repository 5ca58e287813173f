"""``InputProcessor``: a request's validation and tokenization, before any engine state is
touched (vLLM V1's input processor). The engine uses it in process, and the server uses its
own copy when the engine core runs in another process (``server.engine_process``)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

from infer_core.errors import RequestError
from infer_core.loader.tokenizer import Tokenizer
from infer_core.request import Request, SamplingParams


class InputProcessor:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int, max_model_len: int,
                 eos_token_ids: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self._ids = itertools.count()

    def new_request_id(self) -> str:
        return f"req-{next(self._ids)}"

    def make_request(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        arrival_time: float | None = None,
        priority: int = 0,
        add_special_tokens: bool = True,
        cache_salt: str | None = None,
    ) -> Request:
        """Validate and tokenize a request (no engine state is touched: safe from any thread).

        ``cache_salt``: requests with different salts never share prefix-cached KV blocks
        (keep tenants apart); None shares with every other unsalted request."""
        params = params or SamplingParams()
        if cache_salt is not None and (not isinstance(cache_salt, str) or not cache_salt):
            raise RequestError(f"cache_salt must be a non-empty string, got {cache_salt!r}.")
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        else:
            ids = list(prompt)
            bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.vocab_size]
            if bad:
                raise RequestError(
                    f"prompt token ids must be integers in [0, {self.vocab_size}), got {bad[0]!r}."
                )
        if not ids:
            raise RequestError("the prompt is empty; give at least one token.")
        max_len = self.max_model_len
        if len(ids) >= max_len:
            raise RequestError(
                f"the prompt has {len(ids)} tokens, but max_model_len is {max_len}, which leaves "
                f"no room for output; shorten the prompt to at most {max_len - 1} tokens."
            )
        room = max_len - len(ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        return Request(
            request_id=request_id or self.new_request_id(),
            prompt_token_ids=ids,
            sampling_params=params,
            arrival_time=time.monotonic() if arrival_time is None else arrival_time,
            max_tokens=max_tokens,
            priority=priority,
            eos_token_ids=self.eos_token_ids,
            cache_salt=cache_salt,
        )

