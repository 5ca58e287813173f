"""Where a running request stands, as a policy can tell from the public request fields."""

from __future__ import annotations

from infer_core.engine.policy import SchedulableRequest


def is_decoding(request: SchedulableRequest) -> bool:
    """All but the last token has its KV: the next step computes one token (a decode).
    Otherwise the request is prefilling (its prompt, or recomputing after preemption)."""
    return request.num_computed_tokens >= request.num_tokens - 1
