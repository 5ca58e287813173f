"""The API key guard: with ``server.api_key`` set, every route but those marked public
(``/health``) needs ``Authorization: Bearer <key>``; the key is compared in constant time."""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from infer_core.server.errors import ApiError

PUBLIC = "public"  # route opt: no key needed


def api_key_guard(key: str):
    expected = f"Bearer {key}".encode()

    def guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
        if handler.opt.get(PUBLIC):
            return
        given = connection.headers.get("authorization")
        if given is None:
            raise _unauthorized("missing API key; send 'Authorization: Bearer <key>'.")
        if not hmac.compare_digest(given.encode(), expected):
            raise _unauthorized("invalid API key; send 'Authorization: Bearer <key>' with the "
                                "server's key.")

    return guard


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
