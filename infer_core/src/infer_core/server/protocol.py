"""Request bodies of the OpenAI API (and the vLLM extensions we support), parsed strictly.

Every model forbids unknown fields and takes JSON types as they are (no ``"0.5"`` for a
number). :func:`parse_body` maps what goes wrong to the answer a client can act on: 400 for
a body that is not JSON, not an object or lacks a required field; 422 for unknown fields
(all of them named) and for values of the wrong type. Fields whose accepted shapes are a
union (``prompt``, ``stop``, ``messages``) are typed ``Any`` here and checked in
:mod:`infer_core.server.params`, which says in one sentence what shapes are allowed.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, WithJsonSchema

from infer_core.server.errors import ApiError, invalid_value, malformed

# The JSON schemas of the union-typed fields, for the OpenAPI document (validation is in params)
_TEXT = {"type": "string"}
_IDS = {"type": "array", "items": {"type": "integer"}}
PromptField = Annotated[Any, WithJsonSchema({"anyOf": [
    _TEXT, {"type": "array", "items": _TEXT, "minItems": 1}, _IDS,
    {"type": "array", "items": _IDS, "minItems": 1}]})]
StopField = Annotated[Any, WithJsonSchema({"anyOf": [
    {"type": "null"}, _TEXT, {"type": "array", "items": _TEXT}]})]
MessagesField = Annotated[Any, WithJsonSchema({"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role", "content"],  # other keys reach the template
    "properties": {"role": {"type": "string", "minLength": 1},
                   "content": {"anyOf": [_TEXT, {"type": "null"}, {"type": "array", "items": {
                       "type": "object", "required": ["type", "text"],
                       "properties": {"type": {"const": "text"}, "text": _TEXT}}}]}}}})]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Body):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None  # vLLM: usage in every chunk
    include_obfuscation: bool | None = None  # accepted and ignored: no obfuscation padding


class SamplingFields(_Body):
    """Fields completions and chat share: the model, sampling, stopping, streaming."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: StopField = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    n: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    priority: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    return_token_ids: bool | None = None  # extension: prompt and output token ids ride along


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``."""

    prompt: PromptField
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None
    add_special_tokens: bool | None = None


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: MessagesField
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    chat_template: Any = None  # refused when set: templates never come from requests
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool | None = None


Body = TypeVar("Body", bound=_Body)


def parse_body(raw: bytes, model: type[Body], route: str) -> Body:
    """``raw`` parsed as ``model``, or the :class:`ApiError` that explains why not."""
    try:
        return model.model_validate_json(raw or b"", strict=True)
    except ValidationError as exc:
        raise body_error(exc, route) from None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def body_error(exc: ValidationError, route: str) -> ApiError:
    errors = exc.errors(include_url=False)
    for err in errors:
        if err["type"] == "json_invalid":
            reason = err.get("ctx", {}).get("error", err["msg"])
            return malformed(f"the request body is not valid JSON ({reason}); send a JSON object.",
                             code="invalid_json")
        if not err["loc"]:
            return malformed(f"the request body must be a JSON object, got {_json_type(err['input'])}.",
                             code="invalid_json")
    missing = [_dotted(e["loc"]) for e in errors if e["type"] == "missing"]
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        return malformed(f"missing required field{'s' if len(missing) > 1 else ''} {names} for "
                         f"{route}.", param=missing[0], code="missing_field")
    unknown = [_dotted(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        names = ", ".join(f"'{u}'" for u in unknown)
        return invalid_value(
            f"unknown field{'s' if len(unknown) > 1 else ''} {names} for {route}; remove "
            f"{'them' if len(unknown) > 1 else 'it'} (docs/server.md lists the supported fields).",
            param=unknown[0], code="unknown_field")
    problems = [f"{_dotted(e['loc'])}: {e['msg']} (got {_json_type(e['input'])})" for e in errors]
    return invalid_value("; ".join(problems) + ".", param=_dotted(errors[0]["loc"]))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" if len(value) <= 40 else "a string"
    if isinstance(value, int | float):
        return repr(value)
    return "an array" if isinstance(value, list) else "an object"
