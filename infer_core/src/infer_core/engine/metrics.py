"""What the engine measures for the server's /metrics and for benchmarks: gauges (running,
waiting, KV usage), counters (tokens, preemptions, finished requests, prefix-cache queries and
hits) and per-request timings (queue time, time to first token, inter-token times, end-to-end
latency)."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field, replace

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


class EngineMetrics:
    """Updated by ``LLMEngine.step``; observers (the server's Prometheus collector) read
    ``stats`` and drain ``pop_finished()`` for the per-request histograms."""

    def __init__(self) -> None:
        self.stats = EngineStats()
        self._requests: dict[str, RequestMetrics] = {}
        self._inter_token: dict[str, list[float]] = {}
        # bounded, in case nobody drains it (no server attached)
        self._finished: deque[tuple[RequestMetrics, list[float], str | None]] = deque(maxlen=100_000)

    def on_arrival(self, request: Request) -> None:
        self._requests[request.request_id] = RequestMetrics(arrival_time=request.arrival_time)
        self._inter_token[request.request_id] = []

    def on_scheduled(self, request: Request, now: float) -> None:
        m = self._requests[request.request_id]
        if m.first_scheduled_time is None:
            self._requests[request.request_id] = replace(m, first_scheduled_time=now)
            self.stats.prompt_tokens += request.num_prompt_tokens

    def on_token(self, request: Request, now: float) -> None:
        m = self._requests[request.request_id]
        if m.last_token_time is not None:
            self._inter_token[request.request_id].append(now - m.last_token_time)
        self._requests[request.request_id] = replace(
            m, first_token_time=m.first_token_time or now, last_token_time=now)
        self.stats.generation_tokens += 1

    def on_finished(self, request: Request, now: float) -> None:
        m = replace(self._requests.pop(request.request_id), finished_time=now,
                    num_preemptions=request.num_preemptions)
        self._finished.append((m, self._inter_token.pop(request.request_id), request.status.finish_reason))
        self.stats.finished[request.status.finish_reason] += 1

    def on_step(self, scheduler, preemptions: int) -> None:
        self.stats.num_running = len(scheduler.running)
        self.stats.num_waiting = len(scheduler.waiting)
        self.stats.kv_cache_usage = scheduler.cache.usage
        prefix = scheduler.cache.prefix_cache_stats
        self.stats.prefix_cache_queries = prefix.queries
        self.stats.prefix_cache_hits = prefix.hits
        self.stats.num_preemptions += preemptions

    def request_metrics(self, request_id: str) -> RequestMetrics | None:
        return self._requests.get(request_id)

    def pop_finished(self) -> list[tuple[RequestMetrics, list[float], str | None]]:
        """Timings of requests finished since the last call, with their inter-token gaps."""
        done = list(self._finished)
        self._finished.clear()
        return done
