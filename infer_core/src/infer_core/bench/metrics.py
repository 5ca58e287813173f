"""Benchmark metrics over per-request timestamp records, as ``vllm bench serve`` defines them.

Per request (all times in seconds on one clock, reported in milliseconds):

- TTFT = first token's arrival − request start;
- ITL = each gap between consecutive token arrivals (one per streamed chunk after the first);
  the gaps of all requests are pooled into one distribution;
- TPOT = (e2e − TTFT) / (output tokens − 1), only for requests with more than one token;
- e2e latency = end − start.

Over the run: request, output-token and total-token (prompt + output) throughput over the
run's duration; failed requests count in ``failed`` and ``errors`` and in nothing else.
Percentiles interpolate linearly between order statistics (numpy's default).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class RequestRecord:
    """One request as the benchmark saw it.

    ``token_times``: arrival time of each token (or streamed chunk). ``output_tokens`` is the
    server's count (``usage.completion_tokens``) when it gave one, else ``len(token_times)``.
    """

    prompt_tokens: int
    start: float
    end: float
    token_times: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    expected_output_tokens: int | None = None
    success: bool = True
    error: str | None = None
    queue_time: float | None = None  # engine-side wait before the first schedule (offline)
    num_preemptions: int = 0
    tag: str = ""

    @property
    def num_output_tokens(self) -> int:
        return self.output_tokens if self.output_tokens is not None else len(self.token_times)

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.start if self.token_times else None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def itl(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.token_times)]

    @property
    def tpot(self) -> float | None:
        n = self.num_output_tokens
        if n <= 1 or self.ttft is None:
            return None
        return (self.latency - self.ttft) / (n - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Distribution:
    """Summary of one metric, in milliseconds."""

    count: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    p50: float | None
    p90: float | None
    p99: float | None

    @classmethod
    def of_seconds(cls, values: Iterable[float]) -> Distribution:
        ms = [v * 1000.0 for v in values]
        if not ms:
            return cls(0, None, None, None, None, None, None, None)
        mean = sum(ms) / len(ms)
        std = math.sqrt(sum((v - mean) ** 2 for v in ms) / len(ms))
        p50, p90, p99 = (percentile(ms, q) for q in PERCENTILES)
        return cls(len(ms), mean, std, min(ms), max(ms), p50, p90, p99)


@dataclass(frozen=True)
class BenchmarkMetrics:
    completed: int
    failed: int
    errors: list[str]
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests / s
    output_throughput: float  # output tokens / s
    total_token_throughput: float  # (prompt + output) tokens / s
    ttft_ms: Distribution
    tpot_ms: Distribution
    itl_ms: Distribution
    e2el_ms: Distribution
    queue_ms: Distribution
    max_queue_ms: float | None  # starvation: the longest wait before a first schedule
    num_preemptions: int
    short_outputs: int  # completed with fewer tokens than asked (a server ignoring ignore_eos)

    def to_dict(self) -> dict:
        return asdict(self)


def run_duration(records: Sequence[RequestRecord]) -> float:
    """First start to last end (when the caller did not time the run itself)."""
    if not records:
        return 0.0
    return max(r.end for r in records) - min(r.start for r in records)


def summarize(records: Sequence[RequestRecord], duration_s: float | None = None) -> BenchmarkMetrics:
    """The run's metrics; ``duration_s`` defaults to :func:`run_duration`."""
    duration = run_duration(records) if duration_s is None else duration_s
    ok = [r for r in records if r.success]
    failed = [r for r in records if not r.success]
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.num_output_tokens for r in ok)

    def rate(x: float) -> float:
        return x / duration if duration > 0 else 0.0

    queue = [r.queue_time for r in ok if r.queue_time is not None]
    return BenchmarkMetrics(
        completed=len(ok),
        failed=len(failed),
        errors=[r.error or "unknown error" for r in failed],
        duration_s=duration,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=rate(len(ok)),
        output_throughput=rate(total_out),
        total_token_throughput=rate(total_in + total_out),
        ttft_ms=Distribution.of_seconds(r.ttft for r in ok if r.ttft is not None),
        tpot_ms=Distribution.of_seconds(r.tpot for r in ok if r.tpot is not None),
        itl_ms=Distribution.of_seconds(gap for r in ok for gap in r.itl),
        e2el_ms=Distribution.of_seconds(r.latency for r in ok),
        queue_ms=Distribution.of_seconds(queue),
        max_queue_ms=max(queue) * 1000.0 if queue else None,
        num_preemptions=sum(r.num_preemptions for r in ok),
        short_outputs=sum(
            1 for r in ok
            if r.expected_output_tokens is not None and r.num_output_tokens < r.expected_output_tokens
        ),
    )


def summarize_by_tag(records: Sequence[RequestRecord], duration_s: float | None = None) -> dict[str, BenchmarkMetrics]:
    """Metrics per tag (W6's ``short`` victims and ``long`` intruders), when there are several."""
    tags = sorted({r.tag for r in records})
    if len(tags) < 2:
        return {}
    duration = run_duration(records) if duration_s is None else duration_s
    return {tag: summarize([r for r in records if r.tag == tag], duration) for tag in tags}
