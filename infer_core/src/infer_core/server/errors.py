"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Handlers raise :class:`ApiError`; :func:`exception_handlers` turns it, litestar's own HTTP
errors (404 unknown route, 405, 413 from the body-size cap) and anything unexpected (500,
logged, no stack trace to the client) into that body.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException

from infer_core.errors import InferError, RequestError

log = logging.getLogger("infer.server")

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"

RETRY_AFTER_S = 1


@dataclass
class ApiError(Exception):
    """An error answer: HTTP ``status`` and the OpenAI error fields."""

    status: int
    message: str
    type: str = INVALID_REQUEST
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = INVALID_REQUEST, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid_value(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    """422: a field has a value the server cannot accept."""
    return ApiError(422, message, param=param, code=code)


def malformed(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    """400: the body is not JSON, not an object, or lacks a required field."""
    return ApiError(400, message, param=param, code=code)


def unavailable(message: str, code: str) -> ApiError:
    """503 with Retry-After: the queue is full, or the server is shutting down."""
    return ApiError(503, message, type=SERVER_ERROR, code=code,
                    headers={"Retry-After": str(RETRY_AFTER_S)})


def from_request_error(exc: RequestError, known_params: frozenset[str] = frozenset()) -> ApiError:
    """422 for an invalid request the engine refused; ``param`` is the field the message
    starts with (``temperature must be >= 0, got -1``), when it is one of ``known_params``."""
    first = str(exc).split(" ", 1)[0]
    return invalid_value(str(exc), param=first if first in known_params else None)


def error_event(exc: ApiError) -> dict[str, Any]:
    """The ``data:`` payload of a stream's error event (the error body, plus its status)."""
    body = exc.body()
    body["error"]["status"] = exc.status
    return body


def generation_failed(error: str) -> ApiError:
    return ApiError(500, f"generation failed: {error.rstrip('.')}.", type=SERVER_ERROR, code="generation_failed")


# the error of requests still running when a graceful shutdown's drain time is over
SHUTDOWN_ERROR = "the server shut down before the request finished (server.drain_timeout_s)"


def output_error(error: str) -> ApiError:
    """What a failed request's output answers: 503 ``shutting_down`` (with Retry-After) when
    the server's drain ended it — nothing was wrong with the request, a client or load
    balancer can retry it elsewhere — else 500 ``generation_failed``."""
    if error == SHUTDOWN_ERROR:
        return unavailable(f"{SHUTDOWN_ERROR}; retry on another replica or after it restarts.", "shutting_down")
    return generation_failed(error)


_STATUS_CODES = {
    400: "invalid_request", 401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed",
    413: "request_too_large", 415: "unsupported_media_type", 429: "rate_limit_exceeded",
}


def _api_error_response(_: Request, exc: ApiError) -> Response:
    return Response(exc.body(), status_code=exc.status, headers=exc.headers)


def _http_error_response(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if status == 413:
        message = (f"the request body is larger than the server's limit "
                   f"({request.app.state.server.config.server.max_body_bytes} bytes); send a smaller one.")
    elif status == 404:
        message = f"no route {request.url.path}; see GET /v1/models and the server docs for routes."
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path}."
    else:
        message = exc.detail
    kind = SERVER_ERROR if status >= 500 else INVALID_REQUEST
    return Response(error_body(message, kind, None, _STATUS_CODES.get(status)), status_code=status,
                    headers=exc.headers)


def _internal_error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, InferError):  # a user-fixable error that escaped a handler
        return Response(error_body(str(exc), INVALID_REQUEST, None, "invalid_value"), status_code=422)
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(
        error_body(f"internal server error ({type(exc).__name__}); see the server log.",
                   SERVER_ERROR, None, "internal_error"),
        status_code=500,
    )


def exception_handlers() -> dict[Any, Any]:
    return {
        ApiError: _api_error_response,
        HTTPException: _http_error_response,
        Exception: _internal_error_response,
    }
