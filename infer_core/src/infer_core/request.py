"""Requests and their outputs: ``SamplingParams``, ``Request``, ``RequestOutput``.

``SamplingParams`` is validated when it is made, with one sentence per problem saying the
allowed range (``temperature must be >= 0, got -1``); a bad request never reaches the engine.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from infer_core.errors import RequestError

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request (vLLM's meanings)."""

    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 or -1 = all tokens
    top_p: float = 1.0  # (0, 1]
    min_p: float = 0.0  # [0, 1]
    repetition_penalty: float = 1.0  # > 0; over prompt + output
    presence_penalty: float = 0.0  # [-2, 2]; over output
    frequency_penalty: float = 0.0  # [-2, 2]; over output
    max_tokens: int | None = 16  # None = up to max_model_len
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # top-n logprobs per token (0 = the chosen token's only)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif self.stop is None:
            object.__setattr__(self, "stop", ())
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        problems = sampling_problems(self)
        if problems:
            raise RequestError("; ".join(problems) + ".")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def sampling_problems(p: SamplingParams) -> list[str]:
    """Each invalid field as ``name must be <range>, got <value>``."""
    problems = []

    def check(ok: bool, name: str, rule: str, value: object) -> None:
        if not ok:
            problems.append(f"{name} must be {rule}, got {value!r}")

    check(_finite(p.temperature) and p.temperature >= 0, "temperature", ">= 0", p.temperature)
    check(isinstance(p.top_k, int) and p.top_k >= -1, "top_k", "-1, 0 (all tokens) or a positive integer", p.top_k)
    check(_finite(p.top_p) and 0 < p.top_p <= 1, "top_p", "in (0, 1]", p.top_p)
    check(_finite(p.min_p) and 0 <= p.min_p <= 1, "min_p", "in [0, 1]", p.min_p)
    check(_finite(p.repetition_penalty) and p.repetition_penalty > 0, "repetition_penalty", "> 0",
          p.repetition_penalty)
    check(_finite(p.presence_penalty) and -2 <= p.presence_penalty <= 2, "presence_penalty",
          "in [-2, 2]", p.presence_penalty)
    check(_finite(p.frequency_penalty) and -2 <= p.frequency_penalty <= 2, "frequency_penalty",
          "in [-2, 2]", p.frequency_penalty)
    check(p.max_tokens is None or (isinstance(p.max_tokens, int) and p.max_tokens >= 1),
          "max_tokens", ">= 1", p.max_tokens)
    check(isinstance(p.min_tokens, int) and p.min_tokens >= 0, "min_tokens", ">= 0", p.min_tokens)
    if isinstance(p.min_tokens, int) and isinstance(p.max_tokens, int) and p.min_tokens > p.max_tokens:
        problems.append(f"min_tokens must be <= max_tokens ({p.max_tokens}), got {p.min_tokens}")
    check(all(isinstance(s, str) and s for s in p.stop), "stop", "non-empty strings", list(p.stop))
    check(all(isinstance(t, int) and t >= 0 for t in p.stop_token_ids), "stop_token_ids",
          "non-negative integers", list(p.stop_token_ids))
    check(p.seed is None or isinstance(p.seed, int), "seed", "an integer", p.seed)
    check(p.logprobs is None or (isinstance(p.logprobs, int) and 0 <= p.logprobs <= MAX_LOGPROBS),
          "logprobs", f"in [0, {MAX_LOGPROBS}]", p.logprobs)
    return problems


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


FINISHED = frozenset({
    RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
    RequestStatus.FINISHED_ABORTED, RequestStatus.FAILED,
})
_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FAILED: "error",
}


@dataclass(slots=True, eq=False)
class Request:
    """One request inside the engine. ``num_computed_tokens`` counts tokens whose KV is in the
    cache; the scheduler brings it up to ``num_tokens`` (prompt + output so far)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float
    max_tokens: int  # output tokens allowed (from sampling params and max_model_len)
    priority: int = 0
    eos_token_ids: frozenset[int] = frozenset()
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_preemptions: int = 0
    error: str | None = None
    stop_reason: int | str | None = None
    cache_salt: str | None = None  # requests with different salts never share cached KV
    # tokens sampled by a step still running on the device (async scheduling): counted in
    # num_tokens (the next step computes them), not in output_token_ids / all_token_ids yet
    num_placeholders: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_placeholders

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def finished(self) -> bool:
        return self.status.finished


@dataclass(frozen=True)
class Logprob:
    """A token's log-probability and, when asked for, the top-n alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class CompletionOutput:
    """The generated part of a request (vLLM's ``CompletionOutput``)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[Logprob] | None = None
    delta_text: str = ""  # what this step added (for streaming)
    delta_token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class RequestMetrics:
    """Timings of one request, in seconds (``time.monotonic``)."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_preemptions: int = 0

    @property
    def queue_time(self) -> float | None:
        return None if self.first_scheduled_time is None else self.first_scheduled_time - self.arrival_time

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time


@dataclass
class RequestOutput:
    """A request's state as the API returns it; ``finished`` once a finish reason is set."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    error: str | None = None
    metrics: RequestMetrics | None = None
