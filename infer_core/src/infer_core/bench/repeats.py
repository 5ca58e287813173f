"""Repeated runs (``--repeats N``): one report entry whose headline figures are medians.

A workload run N times (same seed, same requests, one engine or server, warm-up once before the
first run) gives N entries of :func:`infer_core.bench.report.run_entry`. :func:`combine_runs`
folds them into one entry:

- ``runs``: each run's own figures (``metrics``, ``by_tag``, ``engine``, ms/token), in order;
- ``metrics``, ``by_tag``, ``engine``, ``ms_per_output_token``: the median over the runs of
  *each* figure separately (throughputs, every TTFT/TPOT/ITL/E2E mean and percentile, counts),
  so two medians may come from different runs. Exceptions: ``failed`` and ``short_outputs``
  are the worst run's (a failure in any run shows), ``errors`` lists every run's errors;
- ``spread``: min and max over the runs of the main figure (ms/token for W1-shaped workloads,
  output tokens/s otherwise);
- ``repeats``: the number of runs asked for (``len(runs)`` is smaller when a time limit stopped
  the repeats early);
- ``samples`` (the plots' distributions): those of the run whose main figure is the median
  (the lower middle one for an even N), ``samples_run`` its index.

Everything that reads a report reads ``metrics`` and friends, so medians are what the summary,
the roofline, the HF side by side and the plots show; an entry without ``runs`` (a report from
before repeats) is one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WORST = frozenset({"failed", "short_outputs"})  # the worst run's, not the median
PER_RUN = ("metrics", "by_tag", "engine", "server", "ms_per_output_token", "e2e_ms_per_output_token")


def median(values: Sequence[float | int | None]) -> float | int | None:
    """The median of the values that are not None (None when none is); for an even count the
    mean of the two middle ones, an int when they are ints with an integral mean."""
    present = sorted(v for v in values if v is not None)
    if not present:
        return None
    mid = len(present) // 2
    if len(present) % 2:
        return present[mid]
    a, b = present[mid - 1], present[mid]
    if isinstance(a, int) and isinstance(b, int) and (a + b) % 2 == 0:
        return (a + b) // 2
    return (a + b) / 2


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def median_of(values: list[Any], key: str = "") -> Any:
    """The median of each numeric leaf of equally shaped values (dicts of dicts of numbers):
    ``WORST`` keys take the maximum, ``errors`` lists are joined (each error prefixed by its
    run's number when there are several runs), anything else is the first run's value."""
    if not values:
        return None
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        return {k: median_of([v[k] for v in values if k in v], k) for k in keys}
    if key == "errors" and all(isinstance(v, list) for v in values):
        if len(values) == 1:
            return list(values[0])
        return [f"run {i}: {e}" for i, errors in enumerate(values, 1) for e in errors]
    if all(v is None or _is_number(v) for v in values):
        if key in WORST:
            present = [v for v in values if v is not None]
            return max(present) if present else None
        return median(values)
    return values[0]


def main_metric(entry: dict[str, Any]) -> tuple[str, str]:
    """``(figure, unit)``: ms/token for a W1-shaped entry, output tokens/s otherwise."""
    if "ms_per_output_token" in entry:
        return "ms_per_output_token", "ms/tok"
    return "output_throughput", "tok/s"


def main_value(figures: dict[str, Any], name: str) -> float | None:
    if name == "output_throughput":
        return (figures.get("metrics") or {}).get("output_throughput")
    return figures.get(name)


def run_figures(entry: dict[str, Any]) -> dict[str, Any]:
    """What ``runs`` keeps of one run."""
    return {k: entry[k] for k in PER_RUN if k in entry}


def runs_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The entry's runs; an entry from before repeats is its own single run."""
    return entry.get("runs") or [run_figures(entry)]


def combine_runs(entries: Sequence[dict[str, Any]], repeats: int | None = None) -> dict[str, Any]:
    """One entry for N runs of the same workload (see the module docstring)."""
    if not entries:
        raise ValueError("combine_runs needs at least one run")
    name, unit = main_metric(entries[0])
    values = [main_value(e, name) for e in entries]
    order = sorted((i for i, v in enumerate(values) if v is not None), key=lambda i: values[i])
    middle = order[(len(order) - 1) // 2] if order else 0
    combined = {k: v for k, v in entries[middle].items() if k not in PER_RUN}
    for k in PER_RUN:
        present = [e[k] for e in entries if k in e]
        if present:
            combined[k] = median_of(present, k)
    present = [v for v in values if v is not None]
    combined["repeats"] = repeats or len(entries)
    combined["runs"] = [run_figures(e) for e in entries]
    combined["spread"] = {"metric": name, "unit": unit, "min": min(present) if present else None,
                          "max": max(present) if present else None}
    combined["samples_run"] = middle
    return combined


def spread_text(entry: dict[str, Any]) -> str:
    """``4.01–4.12 ms/tok``, ``1,230–1,310 tok/s`` (``1.5–6.0 tok/s`` below 100); ``–`` for a
    single run."""
    spread = entry.get("spread")
    if len(runs_of(entry)) < 2 or not spread or spread.get("min") is None:
        return "–"
    digits = 2 if spread["metric"] == "ms_per_output_token" else 0 if spread["max"] >= 100 else 1
    return f"{spread['min']:,.{digits}f}–{spread['max']:,.{digits}f} {spread['unit']}"


def runs_text(entry: dict[str, Any]) -> str:
    """``3``, or ``2/3`` when fewer runs finished than were asked for."""
    done = len(runs_of(entry))
    asked = entry.get("repeats") or done
    return str(done) if asked <= done else f"{done}/{asked}"
