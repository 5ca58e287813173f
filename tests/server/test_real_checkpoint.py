"""The server on the real SmolLM2-135M-Instruct: chat through the model's own template, as
the README's example does, equals ``LLM.chat``."""

from __future__ import annotations

import pytest

from infer_core import LLM, SamplingParams
from infer_core.testing.fixtures import FixtureError, smollm2_135m_instruct

from .conftest import run_server

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llm():
    try:
        path = smollm2_135m_instruct()
    except FixtureError as exc:  # pragma: no cover - no registry access
        pytest.skip(f"SmolLM2 fixture unavailable: {exc}")
    return LLM(model=str(path), device="cpu", max_model_len=512, cache={"num_blocks": 4},
               served_model_name="SmolLM2-135M-Instruct")


def test_chat_on_smollm2_equals_llm_chat(llm):
    want = llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=12))[0].outputs[0]
    assert "Paris" in want.text
    with run_server(llm) as server:
        client = server.client()
        out = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES,
                                             temperature=0, max_tokens=12)
        assert out.choices[0].message.content == want.text
        stream = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES,
                                                temperature=0, max_tokens=12, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == want.text
