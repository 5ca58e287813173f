"""``POST /v1/chat/completions``: ``messages`` rendered through the model's chat template
(sandboxed; never a template from the request), answered as one ``chat.completion`` or
streamed as ``chat.completion.chunk`` deltas."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream

from infer_core.engine.async_engine import RequestStream
from infer_core.errors import ModelLoadError, RequestError
from infer_core.loader.chat_template import render_chat_for
from infer_core.request import RequestOutput
from infer_core.server.errors import (
    ApiError,
    error_event,
    generation_failed,
    invalid_value,
    output_error,
)
from infer_core.server.logprobs import chat_logprobs
from infer_core.server.params import chat_params
from infer_core.server.protocol import ChatCompletionRequest, parse_body
from infer_core.server.state import ServerState
from infer_core.server.streaming import DONE, HEADERS, MEDIA_TYPE, final_outputs, sse
from infer_core.server.usage import usage

ROUTE = "POST /v1/chat/completions"


def render_prompt(state: ServerState, body: ChatCompletionRequest) -> str:
    if state.chat_template is None:
        raise invalid_value(f"this model cannot chat: {state.chat_template_error}",
                            param="messages", code="no_chat_template")
    kwargs = dict(body.chat_template_kwargs or {})
    try:
        return render_chat_for(
            state.engine.engine.tokenizer, state.chat_template, body.messages,
            add_generation_prompt=body.add_generation_prompt is not False, **kwargs)
    except RequestError as exc:
        raise invalid_value(str(exc), param="messages") from None
    except ModelLoadError as exc:  # the model's template broke the sandbox's rules
        raise ApiError(500, str(exc), type="server_error", code="chat_template_error") from None


@post("/v1/chat/completions", status_code=200)
async def create_chat_completion(request: Request) -> Response:
    state: ServerState = request.app.state.server
    body = parse_body(await request.body(), ChatCompletionRequest, ROUTE)
    state.check_model(body.model)
    params = chat_params(body, state.config.server.max_list_items)
    prompt = render_prompt(state, body)
    response_id = state.new_id("chatcmpl")
    requests = await state.make_requests(response_id, [prompt], params, priority=body.priority or 0,
                                   add_special_tokens=False, param="messages")
    streams = state.admit(requests, [prompt])
    view = _View(state, body, response_id)
    if body.stream:
        return Stream(view.events(streams[0]), media_type=MEDIA_TYPE, headers=HEADERS)
    finals = await final_outputs(streams, request.receive)
    if finals is None:  # the client went away; nobody reads this
        return Response(b"", status_code=499)
    return Response(view.response(finals[0]))


class _View:
    """The OpenAI shapes of one chat call."""

    def __init__(self, state: ServerState, body: ChatCompletionRequest, response_id: str) -> None:
        self.state = state
        self.body = body
        self.id = response_id
        self.created = int(time.time())
        self.top_n = body.top_logprobs or 0

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created,
                "model": self.state.model_name, "choices": choices}

    def response(self, output: RequestOutput) -> dict[str, Any]:
        if output.error is not None:
            raise output_error(output.error)
        completion = output.outputs[0]
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": completion.text},
            "logprobs": (chat_logprobs(self.state.texts, completion.logprobs, self.top_n)
                         if completion.logprobs is not None else None),
            "finish_reason": completion.finish_reason,
            "stop_reason": completion.stop_reason,
        }
        if self.body.return_token_ids:
            choice["token_ids"] = completion.token_ids
        out = self._envelope("chat.completion", [choice])
        if self.body.return_token_ids:
            out["prompt_token_ids"] = output.prompt_token_ids
        out["usage"] = usage([output])
        return out

    async def events(self, stream: RequestStream) -> AsyncIterator[bytes]:
        options = self.body.stream_options
        include_usage = bool(options and options.include_usage)
        continuous = include_usage and bool(options and options.continuous_usage_stats)
        sent_logprobs = 0
        last: RequestOutput | None = None

        def chunk(delta: dict[str, Any], output: RequestOutput | None, lp: Any = None,
                  finish: str | None = None, stop_reason: Any = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish,
                      "stop_reason": stop_reason}
            out = self._envelope("chat.completion.chunk", [choice])
            if include_usage:
                out["usage"] = usage([output]) if continuous and output is not None else None
            return sse(out)

        try:
            first = True
            try:
                async for output in stream:
                    last = output
                    if output.error is not None:
                        yield sse(error_event(output_error(output.error)))
                        break
                    if first:
                        role = {"role": "assistant", "content": ""}
                        if self.body.return_token_ids:
                            role["prompt_token_ids"] = output.prompt_token_ids
                        yield chunk(role, output)
                        first = False
                    completion = output.outputs[0]
                    lp = None
                    if completion.logprobs is not None:
                        new = completion.logprobs[sent_logprobs:]
                        sent_logprobs = len(completion.logprobs)
                        lp = chat_logprobs(self.state.texts, new, self.top_n) if new else None
                    if not (completion.delta_text or lp or output.finished):
                        continue
                    delta: dict[str, Any] = {"content": completion.delta_text} if completion.delta_text else {}
                    if self.body.return_token_ids:
                        delta["token_ids"] = completion.delta_token_ids
                    yield chunk(delta, output, lp, completion.finish_reason, completion.stop_reason)
                else:
                    if include_usage and last is not None:
                        yield sse({**self._envelope("chat.completion.chunk", []), "usage": usage([last])})
            finally:
                stream.close()
        except ApiError as exc:
            yield sse(error_event(exc))
        except Exception as exc:  # the engine shut down under the request, ...
            yield sse(error_event(generation_failed(f"{type(exc).__name__}: {exc}")))
        yield DONE
