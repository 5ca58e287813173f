"""The device-trace summary on hand-built traces (values computed by hand) and invariants that
hold for any set of intervals (busy time is the union's length, ops' durations and gaps add up)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.bench.device_trace import Interval, device_intervals, markdown, summarize


def trace(*events: tuple[str, str, float, float]) -> dict:
    return {"traceEvents": [{"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}
                            for cat, name, ts, dur in events]
            + [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 100.0},  # host: ignored
               {"ph": "i", "cat": "kernel", "name": "marker", "ts": 1.0}]}  # not an interval: ignored


def test_hand_computed_two_steps():
    # step 1: a [0, 10), b [8, 12) overlapping a (a PDL launch), gap 3, c [15, 16);
    # step 2: a [20, 30), gap 0 after it, b [30, 34), c [40, 41)
    intervals = device_intervals(trace(
        ("kernel", "c", 15.0, 1.0), ("kernel", "a", 0.0, 10.0), ("kernel", "b", 8.0, 4.0),
        ("gpu_memcpy", "a", 20.0, 10.0), ("kernel", "b", 30.0, 4.0), ("gpu_memset", "c", 40.0, 1.0),
    ))
    assert [i.name for i in intervals] == ["a", "b", "c", "a", "b", "c"]
    s = summarize(intervals, steps=2)
    assert s["period_us"] == pytest.approx(41.0 / 2)
    assert s["busy_us"] == pytest.approx((12 + 1 + 10 + 4 + 1) / 2)
    assert s["idle_us"] == pytest.approx((3 + 4 + 6) / 2)
    ops = {r["op"]: r for r in s["ops"]}
    assert ops["a"] == {"op": "a", "calls": 1.0, "dur_us": 10.0, "gap_before_us": 4.0 / 2}
    assert ops["b"] == {"op": "b", "calls": 1.0, "dur_us": 4.0, "gap_before_us": 0.0}
    assert ops["c"] == {"op": "c", "calls": 1.0, "dur_us": 1.0, "gap_before_us": (3 + 6) / 2}
    assert [r["op"] for r in s["ops"]] == ["a", "c", "b"]  # by duration + gap
    assert any(line == "| `c` | 1.00 | 1.0 | 4.5 |" for line in markdown(s))


def test_no_steps_is_an_error_and_no_intervals_is_empty():
    with pytest.raises(ValueError, match="at least one step"):
        summarize([], steps=0)
    assert summarize([], steps=3)["ops"] == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 1000), st.integers(0, 50)), min_size=1,
                max_size=40), st.integers(1, 5))
def test_union_and_totals(raw, steps):
    intervals = sorted((Interval(n, float(s), float(d)) for n, s, d in raw), key=lambda i: (i.start_us, i.end_us))
    s = summarize(intervals, steps)
    covered = set()
    for i in intervals:
        covered.update(range(int(i.start_us), int(i.end_us)))
    assert s["busy_us"] * steps == pytest.approx(len(covered))
    assert s["period_us"] * steps == pytest.approx(max(i.end_us for i in intervals) - intervals[0].start_us)
    assert s["idle_us"] * steps == pytest.approx(sum(r["gap_before_us"] for r in s["ops"]) * steps)
    assert sum(r["calls"] for r in s["ops"]) * steps == pytest.approx(len(intervals))
    assert sum(r["dur_us"] for r in s["ops"]) * steps == pytest.approx(sum(i.dur_us for i in intervals))
