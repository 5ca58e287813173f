"""``/metrics``: vLLM's metric set under ``infer_`` names, with values that add up."""

from __future__ import annotations

import re

from .conftest import run_server, tiny_llm

GAUGES = ("infer_num_requests_running", "infer_num_requests_waiting", "infer_kv_cache_usage_perc")
COUNTERS = ("infer_prefix_cache_queries_total", "infer_prefix_cache_hits_total",
            "infer_num_preemptions_total", "infer_prompt_tokens_total",
            "infer_generation_tokens_total")
HISTOGRAMS = ("infer_time_to_first_token_seconds", "infer_inter_token_latency_seconds",
              "infer_e2e_request_latency_seconds", "infer_request_queue_time_seconds")


def value(text: str, name: str, **labels: str) -> float:
    wanted = {"model_name": "tiny-metrics", **labels}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if match and match.group(1) == name:
            got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            if got == wanted:
                return float(match.group(3))
    raise AssertionError(f"no {name}{wanted} in /metrics")


def test_metrics_count_what_was_served():
    llm = tiny_llm(served_model_name="tiny-metrics")
    with run_server(llm) as server, server.http() as http:
        before = http.get("/metrics")
        assert before.headers["content-type"].startswith("text/plain; version=0.0.4")
        for name in (*GAUGES, *COUNTERS):
            assert value(before.text, name) == 0
        client = server.client()
        prompts = ["one two", "three four five", "six"]
        usage = [client.completions.create(model=server.model, prompt=p, max_tokens=5,
                                           extra_body={"ignore_eos": True}).usage for p in prompts]
        server.wait_idle()
        text = http.get("/metrics").text
    assert value(text, "infer_prompt_tokens_total") == sum(u.prompt_tokens for u in usage)
    assert value(text, "infer_generation_tokens_total") == 15
    assert value(text, "infer_request_success_total", finished_reason="length") == 3
    for name in HISTOGRAMS:
        expected = 12 if name == "infer_inter_token_latency_seconds" else 3  # 4 gaps each
        assert value(text, f"{name}_count") == expected, name
        assert value(text, f"{name}_bucket", le="+Inf") == expected
        assert value(text, f"{name}_sum") > 0
    for name in GAUGES:
        assert value(text, name) == 0
