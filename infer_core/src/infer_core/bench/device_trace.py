"""Where a step's device time goes between kernels: a torch.profiler (Kineto) trace of several
steps, read as device intervals (kernels, copies, memsets), summarized per step.

``summarize`` gives the period (the window from the first interval's start to the last one's
end, divided by the steps), the busy time (the union of the intervals: kernels that overlap,
as PDL launches do, count once), the idle time (the period minus the busy time), and per op
name its calls, its duration and the idle time just before it (the gap from the end of
everything that ran before it to its start), all per step. An op's "cost" is its duration plus
the gap before it: what the step would save if that op were folded into its neighbour.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEVICE_CATEGORIES = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})


@dataclass(frozen=True, slots=True)
class Interval:
    name: str
    start_us: float
    dur_us: float

    @property
    def end_us(self) -> float:
        return self.start_us + self.dur_us


def device_intervals(trace: dict) -> list[Interval]:
    """The device intervals of a Chrome trace (``prof.export_chrome_trace``), by start time."""
    out = [Interval(str(e.get("name", "?")), float(e["ts"]), float(e.get("dur", 0.0)))
           for e in trace.get("traceEvents", [])
           if e.get("ph") == "X" and e.get("cat") in DEVICE_CATEGORIES and "ts" in e]
    return sorted(out, key=lambda i: (i.start_us, i.end_us))


def load_intervals(path: str | Path) -> list[Interval]:
    return device_intervals(json.loads(Path(path).read_text()))


def summarize(intervals: list[Interval], steps: int, short: int = 60) -> dict:
    """Per step: ``period_us``, ``busy_us``, ``idle_us``, and ``ops`` (name shortened to
    ``short`` characters: calls, dur_us, gap_before_us), ops with the most duration + gap first."""
    if steps <= 0:
        raise ValueError(f"summarize needs at least one step, got {steps}")
    if not intervals:
        return {"steps": steps, "period_us": 0.0, "busy_us": 0.0, "idle_us": 0.0, "ops": []}
    start = intervals[0].start_us
    end = max(i.end_us for i in intervals)
    busy = 0.0
    reach = start  # the end of everything seen so far
    ops: dict[str, list[float]] = {}
    for i in intervals:
        gap = max(i.start_us - reach, 0.0)
        busy += max(i.end_us - max(i.start_us, reach), 0.0)
        reach = max(reach, i.end_us)
        row = ops.setdefault(i.name[:short], [0.0, 0.0, 0.0])
        row[0] += 1
        row[1] += i.dur_us
        row[2] += gap
    table = [{"op": name, "calls": calls / steps, "dur_us": dur / steps, "gap_before_us": gap / steps}
             for name, (calls, dur, gap) in ops.items()]
    table.sort(key=lambda r: r["dur_us"] + r["gap_before_us"], reverse=True)
    period = (end - start) / steps
    return {"steps": steps, "period_us": period, "busy_us": busy / steps, "idle_us": period - busy / steps,
            "ops": table}


def markdown(summary: dict, top: int = 20) -> list[str]:
    lines = [f"Device trace over {summary['steps']} steps (per step): period {summary['period_us']:.1f} µs, "
             f"busy {summary['busy_us']:.1f} µs, idle {summary['idle_us']:.1f} µs.", "",
             "| op | calls | duration µs | idle before µs |", "|---|---:|---:|---:|"]
    for row in summary["ops"][:top]:
        lines.append(f"| `{row['op']}` | {row['calls']:.2f} | {row['dur_us']:.1f} | {row['gap_before_us']:.1f} |")
    return lines
