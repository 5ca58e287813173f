"""Server-sent events in OpenAI's framing, and the request streams behind them.

A streamed answer is ``data: <json>\\n\\n`` chunks ending with ``data: [DONE]\\n\\n``. Each
request ends with exactly one terminal event: the chunk that carries its ``finish_reason``,
or, when generation fails, one ``data: {"error": {...}}`` chunk; ``[DONE]`` follows either.

:func:`merged` interleaves the outputs of several requests (a completion with a list of
prompts) in arrival order. When the consumer stops early (the client disconnected, so
litestar cancelled the response), every stream it was reading is closed, which aborts the
requests still running: their KV blocks are back before the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from infer_core.engine.async_engine import RequestStream
from infer_core.request import RequestOutput
from infer_core.server.errors import generation_failed

DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"


# Characters JSON leaves raw that Python's str.splitlines (httpx's iter_lines, many SSE readers)
# takes for line ends: raw, they would cut a data line in two. Escaped, the JSON is the same.
_LINE_BREAKING = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse(data: dict[str, Any]) -> bytes:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).translate(_LINE_BREAKING)
    return b"data: " + text.encode() + b"\n\n"


async def merged(streams: Sequence[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """``(index, output)`` from every stream as outputs arrive, until all have finished; an
    exception from any stream is raised here (and the others are aborted)."""
    if len(streams) == 1:
        try:
            async for output in streams[0]:
                yield 0, output
        finally:
            streams[0].close()
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for output in stream:
                queue.put_nowait((index, output))
        except Exception as exc:
            queue.put_nowait((index, exc))
        queue.put_nowait((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.close()


async def wait_for_disconnect(receive: Any) -> None:
    """Return when the client has gone (the body must already have been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def final_outputs(streams: Sequence[RequestStream], receive: Any) -> list[RequestOutput] | None:
    """The finished output of each stream, in order; ``None`` if the client disconnected
    first (every request is then aborted). A stream that raised raises a 500 ``ApiError``."""
    finals: list[RequestOutput | None] = [None] * len(streams)

    async def collect() -> None:
        async for index, output in merged(streams):
            finals[index] = output

    work = asyncio.ensure_future(collect())
    gone = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            try:
                work.result()
            except Exception as exc:  # the engine shut down under the request, ...
                raise generation_failed(f"{type(exc).__name__}: {exc}") from exc
            return finals  # type: ignore[return-value]
        return None
    finally:
        for task in (work, gone):
            task.cancel()
        for stream in streams:
            stream.close()
