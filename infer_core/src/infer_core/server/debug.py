"""``GET /debug/engine``: what the engine holds right now, for soak tests and leak hunts.

Served only with ``server.debug_endpoints = true`` (off by default) and, like every route but
``/health``, behind ``server.api_key``. The state is read on the engine thread between two
steps, so the numbers agree with each other:

- ``cache``: blocks in the pool, free, owned (held by some request's block table), the owners
  (request id -> number of blocks) and the audit (blocks of requests the scheduler no longer
  knows: leaks);
- ``scheduler``: each live request's status, how many wait and run, preemptions so far;
- ``engine``: per-request bookkeeping still held by the engine (output states, prompts,
  logprobs) and by the async layer (streams, requests on their way in);
- ``steps``: engine steps run so far.

After a drain every count but ``num_blocks``/``num_free_blocks`` must be zero.
"""

from __future__ import annotations

import os
from typing import Any

from litestar import Request, get

from infer_core.engine.llm_engine import LLMEngine
from infer_core.server.state import ServerState


def engine_state(core: LLMEngine) -> dict[str, Any]:
    """A JSON-ready picture of ``core``; call it on the engine thread."""
    scheduler, cache = core.scheduler, core.cache
    owned = cache.audit(())  # with no request live, every non-empty block table
    leaks = cache.audit(scheduler.requests)
    return {
        "pid": os.getpid(),  # the engine's process (the engine core's with server.engine_process)
        "cache": {
            "backend": type(cache).__name__,
            "num_blocks": cache.num_blocks,
            "num_free_blocks": cache.num_free_blocks,
            "num_owned_blocks": len({b for blocks in owned.values() for b in blocks}),
            "owners": {rid: len(blocks) for rid, blocks in owned.items()},
            "leaks": leaks,
        },
        "scheduler": {
            "requests": {rid: r.status.name for rid, r in scheduler.requests.items()},
            "num_waiting": len(scheduler.waiting),
            "num_running": len(scheduler.running),
            "num_preemptions": scheduler.num_preemptions,
        },
        "engine": {
            # the engine's per-request dictionaries (no public view of them exists)
            "num_output_states": len(getattr(core, "_outputs", ())),
            "num_prompts": len(getattr(core, "_prompts", ())),
            "num_logprobs": len(getattr(core, "_logprobs", ())),
            "num_metrics_states": core.metrics.num_live_requests,
            "finished": dict(core.metrics.stats.finished),
        },
    }


@get("/debug/engine")
async def debug_engine(request: Request) -> dict[str, Any]:
    state: ServerState = request.app.state.server
    engine = state.engine
    picture = await engine.inspect(engine_state)
    picture["engine"].update(num_streams=engine.num_unfinished,
                             num_pending_adds=engine.num_pending_adds)
    picture["steps"] = engine.num_steps
    return picture
