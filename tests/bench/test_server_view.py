"""The server's view of a serve run: histogram sums and counts from Prometheus text, infer's
and vLLM's metric names, means between two scrapes."""

from __future__ import annotations

import pytest

from infer_core.bench.server_view import parse, server_view


def exposition(prefix: str, ttft: tuple[float, int], queue: tuple[float, int], *, label: str = "m") -> str:
    lines = []
    for name, (total, count) in ((f"{prefix}time_to_first_token_seconds", ttft),
                                 (f"{prefix}request_queue_time_seconds", queue)):
        lines += [f"# HELP {name} x", f"# TYPE {name} histogram",
                  f'{name}_bucket{{le="0.1",model_name="{label}"}} {count}',
                  f'{name}_bucket{{le="+Inf",model_name="{label}"}} {count}',
                  f'{name}_count{{model_name="{label}"}} {count}', f'{name}_sum{{model_name="{label}"}} {total}']
    lines += ["# HELP other_seconds y", "# TYPE other_seconds histogram", "other_seconds_count 5", "other_seconds_sum 9"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("prefix", ["infer_", "vllm:"])
def test_means_between_two_scrapes(prefix):
    before = parse(exposition(prefix, (1.0, 10), (0.25, 10)))
    after = parse(exposition(prefix, (1.6, 14), (0.29, 14)))
    assert before == {"ttft": (1.0, 10), "queue": (0.25, 10)}
    view = server_view(before, after)
    assert view == pytest.approx({"ttft_mean_ms": 150.0, "ttft_requests": 4, "queue_mean_ms": 10.0,
                                  "queue_requests": 4})


def test_label_sets_are_summed_and_other_metrics_ignored():
    text = exposition("infer_", (1.0, 2), (0.5, 2), label="a") + exposition("infer_", (3.0, 2), (0.5, 2), label="b")
    assert parse(text.replace("# HELP other_seconds y\n# TYPE other_seconds histogram\n", "", 1)) == {
        "ttft": (4.0, 4), "queue": (1.0, 4)}


def test_no_view_without_both_scrapes_or_new_requests():
    scraped = parse(exposition("infer_", (1.0, 10), (0.25, 10)))
    assert server_view(None, scraped) is None and server_view(scraped, None) is None
    assert server_view(scraped, scraped) is None  # nothing finished in between
    assert parse("# HELP up x\n# TYPE up gauge\nup 1\n") == {}
