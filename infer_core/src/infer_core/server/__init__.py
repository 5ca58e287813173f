"""The OpenAI-compatible HTTP server (litestar on uvicorn): ``create_app`` and ``infer-serve``.

``create_app`` is imported on first use, so that ``infer-serve`` can reject a bad config
before torch and the web stack are imported.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from infer_core.server.app import create_app

        return create_app
    raise AttributeError(f"module 'infer_core.server' has no attribute {name!r}")
