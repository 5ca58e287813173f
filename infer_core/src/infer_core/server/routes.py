"""The small routes: ``/v1/models``, ``/health`` (liveness), ``/ready`` (model loaded, engine
stepping, not draining) and ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath

from infer_core.server.auth import PUBLIC
from infer_core.server.errors import unavailable
from infer_core.server.metrics import CONTENT_TYPE
from infer_core.server.state import ServerState


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.model_name, "object": "model", "created": state.created,
            "owned_by": "infer", "root": state.config.model.path,
            "max_model_len": state.max_model_len}


@get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state: ServerState = request.app.state.server
    return {"object": "list", "data": [_model_card(state)]}


@get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: FromPath[str]) -> dict[str, Any]:
    state: ServerState = request.app.state.server
    state.check_model(model.lstrip("/"), status=404)
    return _model_card(state)


@get("/health", opt={PUBLIC: True})
async def health(request: Request) -> dict[str, str]:
    failure = request.app.state.server.engine.failure
    if failure is not None:  # the engine core's process died: this server cannot recover
        raise unavailable(f"{failure}.", "engine_dead")
    return {"status": "ok"}


@get("/ready")
async def ready(request: Request) -> dict[str, str]:
    state: ServerState = request.app.state.server
    if state.draining:
        raise unavailable("the server is shutting down.", "shutting_down")
    if not state.engine.is_ready:
        raise unavailable("the engine is not running yet.", "not_ready")
    return {"status": "ready"}


@get("/metrics")
async def metrics(request: Request) -> Response:
    state: ServerState = request.app.state.server
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)

