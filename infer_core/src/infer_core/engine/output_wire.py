"""Per-step outputs between the engine-core process and the server process, as deltas.

A streamed :class:`~infer_core.request.RequestOutput` carries the whole prompt and everything
generated so far; sent as is, every step of 32 streams of 1,024-token prompts pickles ~100 kB
in the core (≈ 0.5 ms) and unpickles it in the server (≈ 1 ms, holding the GIL its event
loop needs). The core sends an :class:`OutputDelta` instead (what this step added, plus the
whole text and ids once, when the request finishes), and the server, which knows the prompt
it sent, rebuilds the output (:class:`OutputAssembler`), as vLLM V1's engine core sends
its front end new token ids only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from infer_core.request import CompletionOutput, Logprob, Request, RequestMetrics, RequestOutput


@dataclass(slots=True)
class OutputDelta:
    """What one step added to a request's output."""

    request_id: str
    delta_text: str
    delta_token_ids: list[int]
    finished: bool
    finish_reason: str | None
    stop_reason: int | str | None
    error: str | None
    logprobs: list[Logprob] | None  # the new ones; None when the request asked for none
    metrics: RequestMetrics | None
    text: str | None = None  # the whole text and ids, when finished
    token_ids: list[int] | None = None


class DeltaEncoder:
    """The core's side: ``RequestOutput`` → ``OutputDelta`` (one engine thread calls it)."""

    def __init__(self) -> None:
        self._logprobs_sent: dict[str, int] = {}

    def encode(self, output: RequestOutput) -> OutputDelta:
        completion = output.outputs[0]
        new_logprobs = None
        if completion.logprobs is not None:
            sent = self._logprobs_sent.get(output.request_id, 0)
            new_logprobs = completion.logprobs[sent:]
            self._logprobs_sent[output.request_id] = len(completion.logprobs)
        if output.finished:
            self._logprobs_sent.pop(output.request_id, None)
        return OutputDelta(
            request_id=output.request_id, delta_text=completion.delta_text,
            delta_token_ids=completion.delta_token_ids, finished=output.finished,
            finish_reason=completion.finish_reason, stop_reason=completion.stop_reason, error=output.error,
            logprobs=new_logprobs, metrics=output.metrics,
            text=completion.text if output.finished else None,
            token_ids=completion.token_ids if output.finished else None,
        )


@dataclass
class _Partial:
    prompt: str | None
    prompt_token_ids: list[int]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Logprob] = field(default_factory=list)


class OutputAssembler:
    """The server's side: remembers each request's prompt when it is sent (:meth:`start`)
    and rebuilds a full ``RequestOutput`` from each delta; a finished delta, or
    :meth:`discard` (the request failed on the way), forgets it. Thread-safe."""

    def __init__(self) -> None:
        self._partials: dict[str, _Partial] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._partials)

    def start(self, request: Request, prompt: str | None) -> None:
        with self._lock:
            self._partials[request.request_id] = _Partial(prompt, request.prompt_token_ids)

    def discard(self, request_id: str) -> None:
        with self._lock:
            self._partials.pop(request_id, None)

    def assemble(self, delta: OutputDelta) -> RequestOutput | None:
        """The full output, or None for a request already forgotten (it failed here while the
        core still ran it: nobody reads its stream any more)."""
        with self._lock:
            partial = (self._partials.pop if delta.finished else self._partials.get)(delta.request_id, None)
        if partial is None:
            return None
        partial.text = delta.text if delta.text is not None else partial.text + delta.delta_text
        if delta.token_ids is not None:
            partial.token_ids = list(delta.token_ids)
        else:
            partial.token_ids.extend(delta.delta_token_ids)
        if delta.logprobs is not None:
            partial.logprobs.extend(delta.logprobs)
        completion = CompletionOutput(
            index=0, text=partial.text, token_ids=list(partial.token_ids),
            finish_reason=delta.finish_reason, stop_reason=delta.stop_reason,
            logprobs=list(partial.logprobs) if delta.logprobs is not None else None,
            delta_text=delta.delta_text, delta_token_ids=delta.delta_token_ids,
        )
        return RequestOutput(
            request_id=delta.request_id, prompt=partial.prompt, prompt_token_ids=partial.prompt_token_ids,
            outputs=[completion], finished=delta.finished, error=delta.error, metrics=delta.metrics,
        )
