"""What the engine measures for the server's /metrics and for benchmarks: gauges (running,
waiting, KV usage), counters (tokens, preemptions, finished requests, prefix-cache queries and
hits) and per-request timings (queue time, time to first token, inter-token times, end-to-end
latency)."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from infer_core.engine.kv_cache import PrefixCacheStats
from infer_core.request import Request, RequestMetrics


@dataclass
class EngineStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: Counter = field(default_factory=Counter)  # by finish reason
    prefix_cache_queries: int = 0  # tokens looked up in the prefix cache (cumulative)
    prefix_cache_hits: int = 0  # of those, tokens found cached

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0


@dataclass(slots=True)
class _Timing:
    """One live request's timings, updated in place (``on_token`` runs for every token)."""

    arrival: float
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    gaps: list[float] = field(default_factory=list)  # inter-token times

    def snapshot(self, **extra) -> RequestMetrics:
        return RequestMetrics(self.arrival, self.first_scheduled, self.first_token, self.last_token, **extra)


class EngineMetrics:
    """Updated by ``LLMEngine.step``; observers (the server's Prometheus collector) read
    ``stats`` and drain ``pop_finished()`` for the per-request histograms."""

    def __init__(self, prefix_baseline: PrefixCacheStats | None = None) -> None:
        """``prefix_baseline``: the cache's cumulative prefix counters at the start (the
        engine's warm-up requests are not counted)."""
        self.stats = EngineStats()
        self._prefix_baseline = prefix_baseline or PrefixCacheStats()
        self._timings: dict[str, _Timing] = {}
        # bounded, in case nobody drains it (no server attached)
        self._finished: deque[tuple[RequestMetrics, list[float], str | None]] = deque(maxlen=100_000)

    def on_arrival(self, request: Request) -> None:
        self._timings[request.request_id] = _Timing(request.arrival_time)

    def on_scheduled(self, request: Request, now: float) -> None:
        t = self._timings[request.request_id]
        if t.first_scheduled is None:
            t.first_scheduled = now
            self.stats.prompt_tokens += request.num_prompt_tokens

    def on_token(self, request: Request, now: float) -> None:
        t = self._timings[request.request_id]
        if t.last_token is None:
            t.first_token = now
        else:
            t.gaps.append(now - t.last_token)
        t.last_token = now
        self.stats.generation_tokens += 1

    def on_finished(self, request: Request, now: float) -> None:
        t = self._timings.pop(request.request_id)
        m = t.snapshot(finished_time=now, num_preemptions=request.num_preemptions)
        self._finished.append((m, t.gaps, request.status.finish_reason))
        self.stats.finished[request.status.finish_reason] += 1

    def on_step(self, scheduler, preemptions: int) -> None:
        self.stats.num_running = len(scheduler.running)
        self.stats.num_waiting = len(scheduler.waiting)
        self.stats.kv_cache_usage = scheduler.cache.usage
        prefix = scheduler.cache.prefix_cache_stats
        self.stats.prefix_cache_queries = prefix.queries - self._prefix_baseline.queries
        self.stats.prefix_cache_hits = prefix.hits - self._prefix_baseline.hits
        self.stats.num_preemptions += preemptions

    @property
    def num_live_requests(self) -> int:
        """Requests whose timings are still kept (arrived, not finished): 0 when idle."""
        return len(self._timings)

    def request_metrics(self, request_id: str) -> RequestMetrics | None:
        t = self._timings.get(request_id)
        return None if t is None else t.snapshot()

    def pop_finished(self) -> list[tuple[RequestMetrics, list[float], str | None]]:
        """Timings of requests finished since the last call, with their inter-token gaps."""
        done = list(self._finished)
        self._finished.clear()
        return done
