"""``ServerState``: what the routes share (one per app, kept in ``app.state.server``).

It holds the async engine, the config, the served model's name and chat template, and the
admission rule: a request is refused with 503 while the server drains (SIGTERM), before the
engine is stepping, or when ``server.max_waiting_requests`` requests are already waiting.
Requests of one HTTP call are all validated before any is handed to the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from infer_core.config import EngineConfig
from infer_core.engine.async_engine import AsyncLLMEngine, RequestStream
from infer_core.errors import ModelLoadError, RequestError
from infer_core.loader.chat_template import family_template, resolve_chat_template
from infer_core.request import Request, SamplingParams
from infer_core.server.errors import ApiError, invalid_value, unavailable
from infer_core.server.logprobs import TokenTexts
from infer_core.server.metrics import ServerMetrics
from infer_core.server.params import Prompt

log = logging.getLogger("infer.server")


@dataclass
class ServerState:
    engine: AsyncLLMEngine
    config: EngineConfig
    model_name: str
    max_model_len: int
    chat_template: str | None
    chat_template_error: str | None
    texts: TokenTexts
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False

    @classmethod
    def build(cls, engine: AsyncLLMEngine, config: EngineConfig) -> ServerState:
        core = engine.engine
        template, problem = None, None
        try:
            template = resolve_chat_template(
                config.model.path or "", core.tokenizer, family_template(core.model_class))
        except ModelLoadError as exc:
            problem = str(exc)
        name = core.layout.served_model_name
        return cls(engine, config, name, core.layout.max_model_len, template, problem,
                   TokenTexts(core.tokenizer), ServerMetrics(engine, name))

    # -- lifecycle (litestar startup / shutdown) ----------------------------------------------

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.shutdown()

    @property
    def ready(self) -> bool:
        return self.engine.is_ready and not self.draining

    # -- requests -----------------------------------------------------------------------------

    def check_model(self, model: str, status: int = 422) -> None:
        """A request naming another model is an invalid value (422); ``GET /v1/models/{id}``
        of an unknown id is a missing resource (404)."""
        if model != self.model_name:
            raise ApiError(status, f"the model '{model}' does not exist; this server serves "
                                f"'{self.model_name}' (GET /v1/models).",
                           param="model", code="model_not_found")

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex}"

    async def make_requests(self, base_id: str, prompts: Sequence[Prompt], params: SamplingParams, *,
                            priority: int, add_special_tokens: bool, param: str) -> list[Request]:
        """Validated, tokenized requests (422 naming ``param`` for the first that is invalid).
        Tokenization runs in a worker thread and releases the GIL (``Tokenizer.encode``): a
        1,024-token prompt takes milliseconds, which the event loop (other streams' events)
        and the engine thread would otherwise wait for."""
        return await asyncio.to_thread(self._make_requests, base_id, prompts, params, priority=priority,
                                       add_special_tokens=add_special_tokens, param=param)

    def _make_requests(self, base_id: str, prompts: Sequence[Prompt], params: SamplingParams, *,
                       priority: int, add_special_tokens: bool, param: str) -> list[Request]:
        core = self.engine.engine
        try:
            return [
                core.make_request(p, params, request_id=base_id if len(prompts) == 1 else f"{base_id}-{i}",
                                  priority=priority, add_special_tokens=add_special_tokens)
                for i, p in enumerate(prompts)
            ]
        except RequestError as exc:
            raise invalid_value(str(exc), param=param) from None

    def admit(self, requests: Sequence[Request], prompts: Sequence[Prompt]) -> list[RequestStream]:
        """Hand ``requests`` to the engine, or refuse them all with 503."""
        if self.draining:
            self.metrics.rejected("shutting_down")
            raise unavailable("the server is shutting down and takes no new requests; retry on "
                              "another replica or after it restarts.", "shutting_down")
        if not self.engine.is_ready:
            self.metrics.rejected("not_ready")
            raise unavailable("the engine is not running yet; retry shortly.", "not_ready")
        limit = self.config.server.max_waiting_requests
        waiting = self.engine.num_waiting
        if waiting + len(requests) > limit:
            self.metrics.rejected("queue_full")
            raise unavailable(
                f"the server is at capacity: {waiting} requests are waiting "
                f"(server.max_waiting_requests = {limit}); retry later.", "queue_full")
        return [
            self.engine.add_request(r, p if isinstance(p, str) else None)
            for r, p in zip(requests, prompts, strict=True)
        ]
