"""``create_app``: the litestar application for one engine (no module-level state: every
app has its own state, metrics registry and guard)."""

from __future__ import annotations

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State

from infer_core.config import EngineConfig
from infer_core.engine.async_engine import AsyncLLMEngine
from infer_core.server.auth import api_key_guard
from infer_core.server.chat import create_chat_completion
from infer_core.server.completions import create_completion
from infer_core.server.debug import debug_engine
from infer_core.server.errors import exception_handlers
from infer_core.server.routes import health, list_models, metrics, ready, retrieve_model
from infer_core.server.state import ServerState

ROUTES = (create_completion, create_chat_completion, list_models, retrieve_model, health, ready,
          metrics)
DEBUG_ROUTES = (debug_engine,)  # only with server.debug_endpoints


def create_app(engine: AsyncLLMEngine, config: EngineConfig) -> Litestar:
    """The app serving ``engine``; it starts the engine's loop at startup and stops it at
    shutdown. ``app.state.server`` is its :class:`ServerState`."""
    server = config.server
    state = ServerState.build(engine, config)
    guards = [api_key_guard(server.api_key.get_secret_value())] if server.api_key else []
    cors = CORSConfig(
        allow_origins=list(server.cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
    ) if server.cors_origins else None
    return Litestar(
        route_handlers=[*ROUTES, *(DEBUG_ROUTES if server.debug_endpoints else ())],
        exception_handlers=exception_handlers(),
        guards=guards,
        cors_config=cors,
        request_max_body_size=server.max_body_bytes,
        on_startup=[state.start],
        on_shutdown=[state.stop],
        state=State({"server": state}),
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
