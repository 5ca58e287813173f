"""Schemathesis against the server's OpenAPI document (:mod:`infer_core.server.openapi`): cases
generated from every operation's schema, valid ones and (negative mode) ones that break it, sent
to the real app on real uvicorn; no answer may be a 5xx, and every error is an OpenAI error body.

``make test`` runs a sample (``INFER_FUZZ_CASES``, default 80); ``make fuzz`` runs 1200.
"""

from __future__ import annotations

import os
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from infer_core import LLM
from infer_core.server.app import ROUTES
from infer_core.server.openapi import openapi_schema

from .conftest import serve_in_thread, tiny_model

CASES = int(os.environ.get("INFER_FUZZ_CASES", "80"))
KEY = "fuzz-key"


def test_schema_describes_the_request_bodies():
    schema = openapi_schema(list(ROUTES))
    body = schema["components"]["schemas"]["CompletionRequest"]
    assert body["additionalProperties"] is False and set(body["required"]) == {"model", "prompt"}
    assert {"anyOf"} <= set(body["properties"]["prompt"]) and "stop" in body["properties"]
    chat = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["properties"]["messages"]["type"] == "array"
    assert "/schema" not in str(list(schema["paths"]))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzzed_requests_never_get_a_5xx():
    llm = LLM(model=tiny_model(), device="cpu", max_model_len=64, max_num_seqs=8,
              max_num_batched_tokens=256, cache={"num_blocks": 16})
    name = llm.engine.layout.served_model_name
    schema = schemathesis.openapi.from_dict(openapi_schema(list(ROUTES), served_model=name))
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: Counter = Counter()
    failures: list[str] = []
    with serve_in_thread(llm, api_key=KEY) as (url, _app), httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as http:
        for operation in operations:
            posts = sum(o.method == "post" for o in operations)
            per_op = -(-CASES // posts) if operation.method == "post" else 6
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(generation_mode=mode)

                @settings(max_examples=max(1, -(-per_op // 2)), deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(case=strategy)
                def run(case) -> None:
                    kwargs = case.as_transport_kwargs(base_url=url)
                    response = http.request(kwargs["method"], kwargs["url"],
                                            params=kwargs.get("params"),
                                            content=_content(kwargs), headers={
                                                k: v for k, v in (kwargs.get("headers") or {}).items()
                                                if k.lower() not in ("authorization", "user-agent")})
                    seen[response.status_code] += 1
                    if response.status_code >= 500:
                        failures.append(f"{case.operation.label} {response.status_code}: "
                                        f"{kwargs.get('json', kwargs.get('data'))!r:.300} -> {response.text:.300}")
                    elif response.status_code >= 400:
                        assert set(response.json()["error"]) >= {"message", "type", "code"}

                try:
                    run()
                except Unsatisfiable:  # nothing to break in an operation without inputs
                    assert mode is GenerationMode.NEGATIVE
    total = sum(seen.values())
    print(f"fuzz: {total} cases, statuses {dict(sorted(seen.items()))}")
    assert not failures, failures[:5]
    assert total >= CASES and seen[200] > 0 and seen[422] > 0


def _content(kwargs: dict) -> bytes | None:
    import json

    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data") or kwargs.get("content")
    return data.encode() if isinstance(data, str) else data
