"""Benchmark metric arithmetic on synthetic timestamp streams, against hand-computed values
(vLLM's benchmark_serving definitions) and properties that hold for any stream."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_core.bench.metrics import (
    Distribution,
    RequestRecord,
    percentile,
    summarize,
    summarize_by_tag,
)


def streams() -> list[RequestRecord]:
    return [
        # ttft 0.5; gaps 0.1 0.2 0.3; e2e 1.2; tpot (1.2 - 0.5) / 3
        RequestRecord(prompt_tokens=10, start=0.0, end=1.2, token_times=[0.5, 0.6, 0.8, 1.1],
                      output_tokens=4, expected_output_tokens=4, tag="a"),
        # ttft 0.2; gap 0.05; e2e 0.3; tpot (0.3 - 0.2) / 1
        RequestRecord(prompt_tokens=20, start=1.0, end=1.3, token_times=[1.2, 1.25],
                      expected_output_tokens=2, tag="a", queue_time=0.04, num_preemptions=2),
        RequestRecord(prompt_tokens=7, start=0.2, end=0.4, success=False, error="HTTP 503: queue full",
                      tag="b"),
        # one token: ttft 0.3, no gap, no tpot; asked for 3, got 1
        RequestRecord(prompt_tokens=5, start=0.0, end=0.35, token_times=[0.3], expected_output_tokens=3,
                      tag="b", queue_time=0.01),
    ]


def test_per_request_definitions():
    a = streams()[0]
    assert a.ttft == pytest.approx(0.5)
    assert a.itl == pytest.approx([0.1, 0.2, 0.3])
    assert a.latency == pytest.approx(1.2)
    assert a.tpot == pytest.approx(0.7 / 3)
    assert streams()[3].tpot is None  # one token: no TPOT


def test_run_figures_by_hand():
    m = summarize(streams(), duration_s=2.0)
    assert (m.completed, m.failed) == (3, 1)
    assert m.errors == ["HTTP 503: queue full"]
    assert (m.total_input_tokens, m.total_output_tokens) == (35, 7)  # failed request not counted
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx(3.5)
    assert m.total_token_throughput == pytest.approx(21.0)
    # TTFT [500, 200, 300] ms
    assert m.ttft_ms.mean == pytest.approx(1000 / 3)
    assert m.ttft_ms.p50 == pytest.approx(300)
    assert m.ttft_ms.p90 == pytest.approx(460)
    assert m.ttft_ms.p99 == pytest.approx(496)
    # ITL pooled over requests: [100, 200, 300, 50] ms
    assert m.itl_ms.count == 4
    assert m.itl_ms.mean == pytest.approx(162.5)
    assert m.itl_ms.p50 == pytest.approx(150)
    assert m.itl_ms.p99 == pytest.approx(297)
    assert (m.itl_ms.min, m.itl_ms.max) == (pytest.approx(50), pytest.approx(300))
    # TPOT only for requests with > 1 token: [233.3, 100] ms
    assert m.tpot_ms.count == 2
    assert m.tpot_ms.mean == pytest.approx((700 / 3 + 100) / 2)
    assert m.e2el_ms.mean == pytest.approx((1200 + 300 + 350) / 3)
    assert m.max_queue_ms == pytest.approx(40)
    assert m.num_preemptions == 2
    assert m.short_outputs == 1


def test_duration_defaults_to_first_start_to_last_end():
    assert summarize(streams()).duration_s == pytest.approx(1.3)


def test_by_tag_splits_over_the_same_duration():
    by = summarize_by_tag(streams(), duration_s=2.0)
    assert set(by) == {"a", "b"}
    assert (by["a"].completed, by["b"].completed, by["b"].failed) == (2, 1, 1)
    assert by["a"].output_throughput == pytest.approx(3.0)
    assert summarize_by_tag(streams()[:2]) == {}  # one tag: nothing to split


def test_empty_and_all_failed_runs_have_no_distributions():
    m = summarize([streams()[2]])
    assert (m.completed, m.failed, m.output_throughput) == (0, 1, 0.0)
    assert m.ttft_ms == Distribution(0, None, None, None, None, None, None, None)
    assert summarize([]).duration_s == 0.0


def test_percentile_rejects_nonsense():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


finite = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@settings(deadline=None)
@given(st.lists(finite, min_size=1, max_size=60), st.floats(min_value=0, max_value=100))
def test_percentile_is_numpys_linear_interpolation(values, q):
    np = pytest.importorskip("numpy")
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-9)


gaps = st.lists(st.floats(min_value=1e-4, max_value=2.0), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0, max_value=100), st.floats(min_value=1e-4, max_value=5), gaps),
                min_size=1, max_size=8))
def test_stream_properties(specs):
    records = []
    for start, ttft, g in specs:
        times = [start + ttft]
        for gap in g:
            times.append(times[-1] + gap)
        records.append(RequestRecord(prompt_tokens=3, start=start, end=times[-1], token_times=times))
    m = summarize(records)
    # every gap of every request is pooled, once
    assert m.itl_ms.count == sum(len(r.token_times) - 1 for r in records)
    assert m.itl_ms.mean == pytest.approx(sum(sum(g) for *_, g in specs) * 1000 / m.itl_ms.count)
    for r in records:  # e2e = TTFT + (n - 1) · TPOT when the stream ends with its last token
        assert r.ttft + (r.num_output_tokens - 1) * r.tpot == pytest.approx(r.latency)
    for d in (m.ttft_ms, m.itl_ms, m.tpot_ms, m.e2el_ms):
        assert d.min <= d.p50 <= d.p90 <= d.p99 <= d.max
        assert d.min - 1e-6 <= d.mean <= d.max + 1e-6
    assert m.output_throughput * m.duration_s == pytest.approx(sum(len(r.token_times) for r in records))
    assert not math.isnan(m.total_token_throughput)
