"""From parsed request bodies to what the engine takes: ``SamplingParams`` and prompts.

Every refusal is a 422 naming the field and what is allowed. The engine's own checks
(``temperature must be >= 0, got -1``, prompt longer than ``max_model_len``) surface the same
way through :func:`~infer_core.server.errors.from_request_error`.
"""

from __future__ import annotations

from typing import Any

from infer_core.errors import RequestError
from infer_core.request import SamplingParams
from infer_core.server.errors import ApiError, from_request_error, invalid_value
from infer_core.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields

Prompt = str | list[int]

# Fields copied as they are (when not null) into SamplingParams.
_DIRECT = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
           "frequency_penalty", "seed", "min_tokens", "ignore_eos", "skip_special_tokens",
           "include_stop_str_in_output")
SAMPLING_FIELDS = frozenset(
    {*_DIRECT, "max_tokens", "stop", "stop_token_ids", "logprobs", "top_logprobs", "n",
     "max_completion_tokens"})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_common(body: SamplingFields, max_items: int) -> None:
    if body.n not in (None, 1):
        raise invalid_value(
            f"n must be 1, got {body.n}: this server returns one choice per prompt; send "
            f"separate requests (with different seeds) for more.", param="n", code="unsupported_value")
    if body.logit_bias:
        raise invalid_value("logit_bias is not supported by this server; remove it.",
                            param="logit_bias", code="unsupported_value")
    if body.stream_options is not None and not body.stream:
        raise invalid_value("stream_options is only allowed when stream is true.",
                            param="stream_options")
    if body.stop_token_ids is not None and len(body.stop_token_ids) > max_items:
        raise _too_many("stop_token_ids", len(body.stop_token_ids), max_items)


def _too_many(name: str, count: int, cap: int) -> ApiError:
    return invalid_value(
        f"{name} has {count} items, more than this server accepts ({cap}, server.max_list_items).",
        param=name, code="too_many_items")


def stop_strings(stop: Any, max_items: int) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise invalid_value("stop must be a non-empty string or a list of non-empty strings.", param="stop")
    if len(stop) > max_items:
        raise _too_many("stop", len(stop), max_items)
    return tuple(stop)


def sampling_params(body: SamplingFields, *, max_tokens: int | None, logprobs: int | None,
                    max_items: int) -> SamplingParams:
    _check_common(body, max_items)
    values: dict[str, Any] = {k: getattr(body, k) for k in _DIRECT if getattr(body, k) is not None}
    values["max_tokens"] = max_tokens
    values["logprobs"] = logprobs
    values["stop"] = stop_strings(body.stop, max_items)
    values["stop_token_ids"] = tuple(body.stop_token_ids or ())
    try:
        return SamplingParams(**values)
    except RequestError as exc:
        raise from_request_error(exc, SAMPLING_FIELDS) from None


# --- completions ---------------------------------------------------------------------------------


def completion_params(body: CompletionRequest, max_items: int) -> SamplingParams:
    if body.best_of not in (None, 1):
        raise invalid_value(f"best_of must be 1, got {body.best_of}: this server does not rank "
                            f"candidates.", param="best_of", code="unsupported_value")
    if body.suffix is not None:
        raise invalid_value("suffix (insertion) is not supported by this server; remove it.",
                            param="suffix", code="unsupported_value")
    if body.echo and body.logprobs is not None:
        raise invalid_value("echo with logprobs is not supported: the server does not compute "
                            "prompt logprobs.", param="echo", code="unsupported_value")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default
    return sampling_params(body, max_tokens=max_tokens, logprobs=body.logprobs, max_items=max_items)


def completion_prompts(prompt: Any, max_items: int) -> list[Prompt]:
    """``prompt`` as a list of prompts: one string, strings, token ids, or lists of ids."""
    shapes = ("prompt must be a string, a list of strings, a list of token ids or a list of "
              "lists of token ids")
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list):
        raise invalid_value(f"{shapes}.", param="prompt")
    if not prompt:
        raise invalid_value("prompt is an empty list; give at least one prompt.", param="prompt")
    if all(_is_int(t) for t in prompt):
        return [list(prompt)]
    if len(prompt) > max_items:
        raise _too_many("prompt", len(prompt), max_items)
    if all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if all(isinstance(p, list) and all(_is_int(t) for t in p) for p in prompt):
        return [list(p) for p in prompt]
    raise invalid_value(f"{shapes}; do not mix them.", param="prompt")


# --- chat ----------------------------------------------------------------------------------------


def chat_params(body: ChatCompletionRequest, max_items: int) -> SamplingParams:
    if body.chat_template is not None:
        raise invalid_value(
            "chat_template cannot be set in a request: the server renders the model's own "
            "template, and templates from requests are refused for safety.",
            param="chat_template", code="unsupported_value")
    if body.tools:
        raise invalid_value("tools are not supported by this server yet; remove them.",
                            param="tools", code="unsupported_value")
    if body.tool_choice not in (None, "none"):
        raise invalid_value("tool_choice must be 'none' (tools are not supported).",
                            param="tool_choice", code="unsupported_value")
    fmt = (body.response_format or {}).get("type", "text")
    if fmt != "text":
        raise invalid_value(f"response_format type {fmt!r} is not supported; only 'text' is.",
                            param="response_format", code="unsupported_value")
    if isinstance(body.messages, list) and len(body.messages) > max_items:
        raise _too_many("messages", len(body.messages), max_items)
    if body.top_logprobs is not None and not body.logprobs:
        raise invalid_value("top_logprobs needs logprobs set to true.", param="top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    if body.top_logprobs is not None and not 0 <= body.top_logprobs <= 20:
        raise invalid_value(f"top_logprobs must be in [0, 20], got {body.top_logprobs}.",
                            param="top_logprobs")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return sampling_params(body, max_tokens=max_tokens, logprobs=logprobs, max_items=max_items)
