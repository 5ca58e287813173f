"""The OpenAI-compatible HTTP server (litestar on uvicorn): ``create_app`` and ``infer-serve``."""

from infer_core.server.app import create_app

__all__ = ["create_app"]
