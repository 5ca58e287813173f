"""``infer-bench soak`` and ``infer-bench soak --burst``: the reliability runs
(docs/reliability.md).

Soak: ``concurrency`` workers send the chaos mix (:mod:`infer_core.bench.chaos`) back to back for
``duration_s`` while ``/health`` is polled; then the harness waits for the server to drain and
checks, through ``/debug/engine``, that no KV block is owned and no request state is left.

Burst: a closed loop of ``max_num_seqs`` workers measures the sustainable rate, then requests
arrive (Poisson) at ``burst_factor`` times that rate for ``duration_s``: the excess must be
refused with 503 quickly (p99 of refusal latency) and nothing may answer another 5xx.

Both return a report (a dict): figures, ``checks`` (name -> passed, with details) and ``passed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from infer_core.bench.chaos import ChaosMix, Outcome, good_body, malformed_requests, send, send_good
from infer_core.bench.soak_server import ManagedServer

MIB = 1 << 20


@dataclass(frozen=True)
class SoakOptions:
    duration_s: float = 60.0
    concurrency: int = 64
    mix: ChaosMix = field(default_factory=ChaosMix)
    seed: int = 0
    health_interval_s: float = 0.5
    health_timeout_s: float = 5.0
    request_timeout_s: float = 300.0
    drain_timeout_s: float = 120.0
    max_rss_growth_mib: float = 256.0
    burst_factor: float = 4.0
    calibrate_s: float = 15.0
    max_refusal_p99_s: float = 1.0


@dataclass(frozen=True)
class ServerShape:
    """What the harness needs to know about the served engine."""

    max_num_seqs: int
    max_model_len: int
    max_body_bytes: int
    # the contiguous cache reserves max_model_len per request at admission: it never preempts
    preempts: bool = True


class _Health:
    """Polls ``/health`` until stopped: count, failures, slowest answer."""

    def __init__(self, client: httpx.AsyncClient, interval: float, timeout: float) -> None:
        self.client, self.interval, self.timeout = client, interval, timeout
        self.polls, self.failures, self.max_latency_s = 0, [], 0.0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                response = await self.client.get("/health", timeout=self.timeout)
                if response.status_code != 200:
                    self.failures.append(f"status {response.status_code}")
            except httpx.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.polls += 1
            self.max_latency_s = max(self.max_latency_s, time.perf_counter() - start)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def stop(self) -> None:
        self._stop.set()

    def figures(self) -> dict[str, Any]:
        return {"polls": self.polls, "failures": len(self.failures),
                "first_failures": self.failures[:5], "max_latency_s": round(self.max_latency_s, 3)}


def _client(server: ManagedServer, options: SoakOptions, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url, headers=server.headers, timeout=options.request_timeout_s,
        limits=httpx.Limits(max_connections=connections + 8, max_keepalive_connections=connections + 8))


async def _guarded(coro, kind: str) -> Outcome:
    """A request whose transport failed (reset, refused, timeout) is an outcome with a problem."""
    try:
        return await coro
    except httpx.HTTPError as exc:
        out = Outcome(kind)
        out.problems.append(f"{kind}: transport error {type(exc).__name__}: {exc}")
        return out


async def _drained_state(server: ManagedServer, client: httpx.AsyncClient,
                         timeout: float) -> tuple[dict[str, Any], float]:
    """``/debug/engine`` once the engine holds no request (or at the timeout), and how long
    that took."""
    start = time.monotonic()
    while True:
        state = await server.debug_state(client)
        idle = not state["scheduler"]["requests"] and state["engine"]["num_streams"] == 0
        if idle or time.monotonic() - start > timeout:
            return state, time.monotonic() - start
        await asyncio.sleep(0.2)


def _leak_checks(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cache, sched, engine = state["cache"], state["scheduler"], state["engine"]
    left = {k: v for k, v in engine.items()
            if k.startswith("num_") and v} | ({"scheduler_requests": len(sched["requests"])}
                                              if sched["requests"] else {})
    return {
        "no_kv_blocks_owned": {"passed": cache["num_owned_blocks"] == 0 and not cache["leaks"],
                               "owned": cache["num_owned_blocks"], "leaks": cache["leaks"],
                               "free": cache["num_free_blocks"], "total": cache["num_blocks"]},
        "no_request_state_left": {"passed": not left, "left": left},
    }


def _outcome_figures(outcomes: list[Outcome]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    kinds = Counter(o.kind.split(":")[0] for o in outcomes)
    statuses = Counter(str(o.status) for o in outcomes)
    problems = [p for o in outcomes for p in o.problems]
    unexpected_5xx = [o for o in outcomes if o.status is not None and o.status >= 500
                      and o.status != 503] + [o for o in outcomes
                                              if any("error event" in p for p in o.problems)]
    terminal = [p for p in problems if "terminal events" in p or "[DONE]" in p]
    transport = [p for p in problems if "transport error" in p]
    status = [p for p in problems if "status" in p and "error event" not in p]
    figures = {"requests": len(outcomes), "by_kind": dict(kinds), "by_status": dict(statuses),
               "cancelled": sum(o.cancelled for o in outcomes),
               "completed_streams": sum(1 for o in outcomes if o.num_done and not o.cancelled),
               "problems": len(problems), "first_problems": problems[:10]}
    checks = {
        "no_unexpected_5xx": {"passed": not unexpected_5xx, "count": len(unexpected_5xx)},
        "one_terminal_event_per_request": {"passed": not terminal, "missing_or_extra": len(terminal)},
        "expected_statuses": {"passed": not status, "mismatches": len(status)},
        "no_transport_errors": {"passed": not transport, "count": len(transport)},
    }
    return figures, checks


async def run_soak(server: ManagedServer, shape: ServerShape, options: SoakOptions) -> dict[str, Any]:
    rng = random.Random(options.seed)
    async with _client(server, options, options.concurrency) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        bad = malformed_requests(model, shape.max_model_len, shape.max_body_bytes)
        before = await server.counters(client)
        rss_start = server.rss_bytes()
        health = _Health(client, options.health_interval_s, options.health_timeout_s)
        health_task = asyncio.create_task(health.run())
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + options.duration_s

        async def worker(seed: int) -> None:
            wrng = random.Random(seed)
            while time.monotonic() < deadline:
                outcomes.append(await _guarded(send(client, wrng, model, options.mix, bad), "soak"))

        start = time.monotonic()
        await asyncio.gather(*(worker(rng.randrange(1 << 30)) for _ in range(options.concurrency)))
        elapsed = time.monotonic() - start
        state, drain_s = await _drained_state(server, client, options.drain_timeout_s)
        health.stop()
        await health_task
        after = await server.counters(client)
        rss_end = server.rss_bytes()
    figures, checks = _outcome_figures(outcomes)
    checks |= _leak_checks(state)
    checks |= _common_checks(before, after, rss_start, rss_end, health, options)
    if not shape.preempts:
        checks.pop("preemption_happened")
    return _report("soak", options, shape, elapsed, drain_s, figures | _server_figures(
        before, after, rss_start, rss_end, health, state), checks)


def _common_checks(before: dict[str, float], after: dict[str, float], rss_start: int | None,
                   rss_end: int | None, health: _Health,
                   options: SoakOptions) -> dict[str, dict[str, Any]]:
    growth = (rss_end - rss_start) / MIB if rss_start and rss_end else None
    preemptions = after.get("infer_num_preemptions_total", 0) - before.get("infer_num_preemptions_total", 0)
    return {
        "health_ok_throughout": {"passed": not health.failures and health.polls > 0,
                                 "failures": len(health.failures)},
        "rss_growth_bounded": {"passed": growth is None or growth <= options.max_rss_growth_mib,
                               "growth_mib": None if growth is None else round(growth, 1),
                               "limit_mib": options.max_rss_growth_mib},
        "preemption_happened": {"passed": preemptions > 0, "preemptions": preemptions},
    }


def _server_figures(before: dict[str, float], after: dict[str, float], rss_start: int | None,
                    rss_end: int | None, health: _Health, state: dict[str, Any],
                    finished_before: dict[str, int] | None = None) -> dict[str, Any]:
    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    finished_before = finished_before or {}
    finished = {reason: n - finished_before.get(reason, 0)
                for reason, n in state["engine"].get("finished", {}).items()}

    return {
        "server": {
            "rss_start_mib": rss_start and round(rss_start / MIB, 1),
            "rss_end_mib": rss_end and round(rss_end / MIB, 1),
            "preemptions": delta("infer_num_preemptions_total"),
            "finished_requests": delta("infer_request_success_total"),
            "rejected_503": delta("infer_request_rejected_total"),
            "generation_tokens": delta("infer_generation_tokens_total"),
            "engine_steps": state["steps"],
            "finished_by_reason": finished,
        },
        "health": health.figures(),
    }


def _report(mode: str, options: SoakOptions, shape: ServerShape, elapsed: float, drain_s: float,
            figures: dict[str, Any], checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"mode": mode, "duration_s": round(elapsed, 1), "drain_s": round(drain_s, 2),
            "options": {"concurrency": options.concurrency if mode == "soak" else "open loop",
                        "seed": options.seed,
                        "cancel_share": options.mix.cancel, "malformed_share": options.mix.malformed,
                        "burst_factor": options.burst_factor},
            "shape": shape.__dict__, **figures, "checks": checks,
            "passed": all(c["passed"] for c in checks.values())}


# -- burst ------------------------------------------------------------------------------------


async def run_burst(server: ManagedServer, shape: ServerShape, options: SoakOptions) -> dict[str, Any]:
    rng = random.Random(options.seed)
    mix = ChaosMix(cancel=0.0, malformed=0.0, stream=0.5, chat=0.0)
    async with _client(server, options, 4 * shape.max_num_seqs) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]

        def request() -> tuple[str, dict[str, Any]]:
            path, body = good_body(rng, model, chat=False, stream=rng.random() < mix.stream)
            return path, body | {"max_tokens": 32, "ignore_eos": True}

        # calibrate: a closed loop at max_num_seqs gives the rate the server sustains
        done = 0
        stop_at = time.monotonic() + options.calibrate_s

        async def closed() -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                path, body = request()
                out = await _guarded(send_good(client, path, body, "calibrate", None), "calibrate")
                done += out.status == 200
        start = time.monotonic()
        await asyncio.gather(*(closed() for _ in range(shape.max_num_seqs)))
        rate = max(done / (time.monotonic() - start), 0.1)
        await _drained_state(server, client, options.drain_timeout_s)

        before = await server.counters(client)
        finished_before = (await server.debug_state(client))["engine"].get("finished", {})
        rss_start = server.rss_bytes()
        health = _Health(client, options.health_interval_s, options.health_timeout_s)
        health_task = asyncio.create_task(health.run())
        tasks: list[asyncio.Task] = []
        start = time.monotonic()
        while time.monotonic() - start < options.duration_s:
            path, body = request()
            tasks.append(asyncio.create_task(_guarded(send_good(client, path, body, "burst", None), "burst")))
            await asyncio.sleep(rng.expovariate(options.burst_factor * rate))
        outcomes = list(await asyncio.gather(*tasks))
        elapsed = time.monotonic() - start
        state, drain_s = await _drained_state(server, client, options.drain_timeout_s)
        health.stop()
        await health_task
        after = await server.counters(client)
        rss_end = server.rss_bytes()
    figures, checks = _outcome_figures(outcomes)
    refusals = sorted(o.latency_s for o in outcomes if o.status == 503)
    p99 = refusals[min(len(refusals) - 1, int(0.99 * len(refusals)))] if refusals else None
    figures["burst"] = {
        "sustainable_rate_rps": round(rate, 2), "offered_rate_rps": round(options.burst_factor * rate, 2),
        "sent": len(outcomes), "accepted": sum(o.status == 200 for o in outcomes),
        "refused_503": len(refusals),
        "refusal_p50_s": refusals[len(refusals) // 2] if refusals else None, "refusal_p99_s": p99,
    }
    checks |= _leak_checks(state)
    checks |= _common_checks(before, after, rss_start, rss_end, health, options)
    checks.pop("preemption_happened")
    checks["excess_refused_with_503"] = {"passed": bool(refusals), "refused": len(refusals)}
    checks["refusals_fast"] = {"passed": p99 is not None and p99 <= options.max_refusal_p99_s,
                               "p99_s": p99, "limit_s": options.max_refusal_p99_s}
    return _report("burst", options, shape, elapsed, drain_s, figures | _server_figures(
        before, after, rss_start, rss_end, health, state, finished_before), checks)
