"""The ``usage`` object: prompt, completion and total token counts of a response."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infer_core.request import RequestOutput


def usage(outputs: Sequence[RequestOutput | None]) -> dict[str, Any]:
    prompt = sum(len(o.prompt_token_ids) for o in outputs if o is not None)
    completion = sum(len(o.outputs[0].token_ids) for o in outputs if o is not None)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}
