"""Prometheus metrics of one server (vLLM's set, named ``infer_*``), in a registry of its own.

Gauges and engine counters are read when ``/metrics`` is scraped; the per-request histograms
are fed by the engine thread as requests finish (``AsyncLLMEngine.add_finished_listener``).
Every series has a ``model_name`` label.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infer_core.engine.async_engine import AsyncLLMEngine, FinishedRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                    30.0, 40.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)


class _EngineCollector(Collector):
    """Gauges and cumulative counters read from the engine at scrape time."""

    def __init__(self, engine: AsyncLLMEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        snapshot = self.engine.snapshot
        stats = self.engine.engine.metrics.stats
        label = [self.model_name]
        gauges = (
            ("infer_num_requests_running", "Requests running in the engine (in the batch).",
             snapshot.num_running),
            ("infer_num_requests_waiting", "Requests waiting to run (queued or preempted).",
             self.engine.num_waiting),
            ("infer_kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).",
             snapshot.kv_cache_usage),
        )
        for name, doc, value in gauges:
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(label, value)
            yield family
        counters = (
            ("infer_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
             getattr(stats, "prefix_cache_queries", 0)),
            ("infer_prefix_cache_hits", "Prompt tokens found in the prefix cache.",
             getattr(stats, "prefix_cache_hits", 0)),
            ("infer_num_preemptions", "Requests preempted (KV blocks taken back) so far.",
             stats.num_preemptions),
            ("infer_prompt_tokens", "Prompt tokens scheduled (prefilled) so far.", stats.prompt_tokens),
            ("infer_generation_tokens", "Tokens generated so far.", stats.generation_tokens),
        )
        for name, doc, value in counters:
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(label, value)
            yield family


class ServerMetrics:
    def __init__(self, engine: AsyncLLMEngine, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        self.registry.register(_EngineCollector(engine, model_name))
        reg, labels = self.registry, ["model_name"]
        self.ttft = Histogram("infer_time_to_first_token_seconds",
                              "Time from arrival to the first output token.", labels,
                              buckets=_TTFT_BUCKETS, registry=reg).labels(model_name)
        self.itl = Histogram("infer_inter_token_latency_seconds",
                             "Time between consecutive output tokens of a request.", labels,
                             buckets=_ITL_BUCKETS, registry=reg).labels(model_name)
        self.e2e = Histogram("infer_e2e_request_latency_seconds",
                             "Time from arrival to the end of a request.", labels,
                             buckets=_LATENCY_BUCKETS, registry=reg).labels(model_name)
        self.queue = Histogram("infer_request_queue_time_seconds",
                               "Time from arrival to the first scheduling of a request.", labels,
                               buckets=_LATENCY_BUCKETS, registry=reg).labels(model_name)
        self.success = Counter("infer_request_success", "Requests finished, by finish reason.",
                               ["model_name", "finished_reason"], registry=reg)
        self._rejected = Counter("infer_request_rejected", "Requests refused with 503, by reason.",
                                 ["model_name", "reason"], registry=reg)
        engine.add_finished_listener(self.observe_finished)

    def rejected(self, reason: str) -> None:
        self._rejected.labels(self.model_name, reason).inc()

    def observe_finished(self, records: list[FinishedRecord]) -> None:
        """Called on the engine thread with the timings of requests that finished."""
        for metrics, gaps, reason in records:
            if metrics.ttft is not None:
                self.ttft.observe(metrics.ttft)
            for gap in gaps:
                self.itl.observe(gap)
            if metrics.finished_time is not None:
                self.e2e.observe(metrics.finished_time - metrics.arrival_time)
            if metrics.queue_time is not None:
                self.queue.observe(metrics.queue_time)
            self.success.labels(self.model_name, reason or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
