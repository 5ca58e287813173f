"""The OpenAPI document of the server's routes, for fuzzers and client generators.

The served app has no schema routes (docs/server.md, security defaults). litestar generates the
paths and operations from the same route handlers in a throwaway app; the handlers read their
bodies themselves (to answer 400 and 422 as OpenAI does), so the request bodies come from the
pydantic models of :mod:`infer_core.server.protocol`, and every answer other than 200 is the
OpenAI error body.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.openapi import OpenAPIConfig

from infer_core.server.protocol import ChatCompletionRequest, CompletionRequest
from infer_core.version import __version__

REQUEST_BODIES = {"/v1/completions": CompletionRequest,
                  "/v1/chat/completions": ChatCompletionRequest}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def openapi_schema(route_handlers: list[Any], served_model: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a dict) of ``route_handlers`` (``create_app``'s routes); with
    ``served_model``, ``model`` fields are that name (any other is refused)."""
    app = Litestar(route_handlers=route_handlers, logging_config=None,
                   openapi_config=OpenAPIConfig(title="infer", version=__version__, render_plugins=[]))
    schema = app.openapi_schema.to_schema()
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            ok = operation["responses"].get("200") or operation["responses"].get("201") or {
                "description": "OK"}
            operation["responses"] = {"200": ok, "default": {
                "description": "an OpenAI error body",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}
            model = REQUEST_BODIES.get(path)
            if model is not None:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                if served_model is not None:
                    body["properties"]["model"] = {"type": "string", "enum": [served_model]}
                components[model.__name__] = body
                operation["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
    return schema
