"""``POST /v1/completions``: one choice per prompt (``prompt`` may be a list), streamed as
``text_completion`` chunks or answered as one body."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream

from infer_core.engine.async_engine import RequestStream
from infer_core.request import RequestOutput
from infer_core.server.errors import ApiError, error_event, generation_failed, output_error
from infer_core.server.logprobs import completion_logprobs
from infer_core.server.params import Prompt, completion_params, completion_prompts
from infer_core.server.protocol import CompletionRequest, parse_body
from infer_core.server.state import ServerState
from infer_core.server.streaming import DONE, HEADERS, MEDIA_TYPE, final_outputs, merged, sse
from infer_core.server.usage import usage

ROUTE = "POST /v1/completions"


@post("/v1/completions", status_code=200)
async def create_completion(request: Request) -> Response:
    state: ServerState = request.app.state.server
    body = parse_body(await request.body(), CompletionRequest, ROUTE)
    state.check_model(body.model)
    max_items = state.config.server.max_list_items
    params = completion_params(body, max_items)
    prompts = completion_prompts(body.prompt, max_items)
    response_id = state.new_id("cmpl")
    requests = await state.make_requests(
        response_id, prompts, params, priority=body.priority or 0,
        add_special_tokens=body.add_special_tokens is not False, param="prompt")
    streams = state.admit(requests, prompts)
    view = _View(state, body, response_id, prompts)
    if body.stream:
        return Stream(view.events(streams), media_type=MEDIA_TYPE, headers=HEADERS)
    finals = await final_outputs(streams, request.receive)
    if finals is None:  # the client went away; nobody reads this
        return Response(b"", status_code=499)
    return Response(view.response(finals))


class _View:
    """The OpenAI shapes of one completion call."""

    def __init__(self, state: ServerState, body: CompletionRequest, response_id: str,
                 prompts: Sequence[Prompt]) -> None:
        self.state = state
        self.body = body
        self.id = response_id
        self.created = int(time.time())
        self.prompts = prompts
        self.echo = bool(body.echo)

    def _echo(self, index: int, output: RequestOutput) -> str:
        prompt = self.prompts[index]
        if isinstance(prompt, str):
            return prompt
        return self.state.engine.engine.tokenizer.decode(output.prompt_token_ids, skip_special_tokens=False)

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.state.model_name, "choices": choices}

    def response(self, finals: list[RequestOutput]) -> dict[str, Any]:
        choices = []
        for index, output in enumerate(finals):
            if output.error is not None:
                raise output_error(output.error)
            completion = output.outputs[0]
            prefix = self._echo(index, output) if self.echo else ""
            choice: dict[str, Any] = {
                "index": index, "text": prefix + completion.text,
                "logprobs": (completion_logprobs(self.state.texts, completion.logprobs, len(prefix))
                             if completion.logprobs is not None else None),
                "finish_reason": completion.finish_reason, "stop_reason": completion.stop_reason,
            }
            if self.body.return_token_ids:
                choice["prompt_token_ids"] = output.prompt_token_ids
                choice["token_ids"] = completion.token_ids
            choices.append(choice)
        out = self._envelope(choices)
        out["usage"] = usage(finals)
        return out

    async def events(self, streams: list[RequestStream]) -> AsyncIterator[bytes]:
        options = self.body.stream_options
        include_usage = bool(options and options.include_usage)
        continuous = include_usage and bool(options and options.continuous_usage_stats)
        sent_logprobs = [0] * len(streams)
        offsets = [0] * len(streams)
        started = [False] * len(streams)
        latest: list[RequestOutput | None] = [None] * len(streams)
        try:
            async with aclosing(merged(streams)) as outputs:
                async for index, output in outputs:
                    latest[index] = output
                    if output.error is not None:
                        yield sse(error_event(output_error(output.error)))
                        break
                    completion = output.outputs[0]
                    text = completion.delta_text
                    if self.echo and not started[index]:
                        text = self._echo(index, output) + text
                    lp = None
                    if completion.logprobs is not None:
                        new = completion.logprobs[sent_logprobs[index]:]
                        sent_logprobs[index] = len(completion.logprobs)
                        lp = completion_logprobs(self.state.texts, new, offsets[index])
                        offsets[index] += sum(len(t) for t in lp["tokens"])
                    if not (text or (lp and lp["tokens"]) or output.finished or not started[index]):
                        continue
                    choice: dict[str, Any] = {
                        "index": index, "text": text, "logprobs": lp,
                        "finish_reason": completion.finish_reason, "stop_reason": completion.stop_reason,
                    }
                    if self.body.return_token_ids:
                        choice["token_ids"] = completion.delta_token_ids
                        if not started[index]:
                            choice["prompt_token_ids"] = output.prompt_token_ids
                    started[index] = True
                    chunk = self._envelope([choice])
                    if include_usage:
                        chunk["usage"] = usage([o for o in latest if o is not None]) if continuous else None
                    yield sse(chunk)
                else:
                    if include_usage:
                        yield sse({**self._envelope([]), "usage": usage(latest)})
        except ApiError as exc:
            yield sse(error_event(exc))
        except Exception as exc:  # the engine shut down under the request, ...
            yield sse(error_event(generation_failed(f"{type(exc).__name__}: {exc}")))
        yield DONE
