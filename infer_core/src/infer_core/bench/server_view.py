"""The server's own view of a serve run, from its Prometheus ``/metrics`` before and after.

A client measures time to first token from sending the request to reading the first token's
chunk; the server's histograms measure it from the request's arrival in the engine (after
HTTP parsing and tokenization) to the token's sampling. The difference of the means is what
the HTTP process adds: parsing, tokenization, waiting for the engine thread, and delivering
the chunk. Both infer's metric names and vLLM's are read; a server without them (or without
``/metrics``) gives no view.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

# histogram -> the names servers give it (infer's, vLLM's)
HISTOGRAMS = {
    "ttft": ("infer_time_to_first_token_seconds", "vllm:time_to_first_token_seconds"),
    "queue": ("infer_request_queue_time_seconds", "vllm:request_queue_time_seconds"),
}


def parse(text: str) -> dict[str, tuple[float, float]]:
    """``{histogram: (sum, count)}`` from Prometheus text, summed over label sets."""
    names = {name: key for key, options in HISTOGRAMS.items() for name in options}
    out: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        key = names.get(family.name)
        if key is None:
            continue
        total, count = out.get(key, (0.0, 0.0))
        for sample in family.samples:
            if sample.name == family.name + "_sum":
                total += sample.value
            elif sample.name == family.name + "_count":
                count += sample.value
        out[key] = (total, count)
    return out


async def scrape(client: httpx.AsyncClient, base_url: str, headers: Mapping[str, str]) -> dict[str, tuple[float, float]] | None:
    """The histograms' sums and counts now, or None when the server has no usable /metrics."""
    try:
        response = await client.get(base_url.rstrip("/") + "/metrics", headers=dict(headers))
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    found = parse(response.text)
    return found or None


def server_view(before: dict[str, tuple[float, float]] | None,
                after: dict[str, tuple[float, float]] | None) -> dict[str, float] | None:
    """Means over the requests observed between two scrapes: ``ttft_mean_ms``,
    ``queue_mean_ms`` (each with its request count), or None without both scrapes."""
    if not before or not after:
        return None
    view: dict[str, float] = {}
    for key in HISTOGRAMS:
        if key in before and key in after:
            total = after[key][0] - before[key][0]
            count = after[key][1] - before[key][1]
            if count > 0:
                view[f"{key}_mean_ms"] = total / count * 1000
                view[f"{key}_requests"] = count
    return view or None
