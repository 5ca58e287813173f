"""``infer-serve --config engine.toml [--section.key VALUE ...]``: load the config, assemble
the plugins, load the model, log what was loaded, serve the OpenAI API on uvicorn.

User errors (a bad config, a missing model, a plugin that fails to import) print one
``error: ...`` line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from infer_core.config import EngineConfig, load_config
from infer_core.errors import InferError
from infer_core.plugins import make_plugin_manager
from infer_core.version import __version__

if TYPE_CHECKING:
    from infer_core.engine.async_engine import AsyncLLMEngine

EXIT_USER_ERROR = 2
# After the drain, how long uvicorn waits for responses still being written.
WRITE_GRACE_S = 5
log = logging.getLogger("infer.server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infer-serve",
        description="Serve a model over the OpenAI API (/v1/completions, /v1/chat/completions, "
        "/v1/models, /health, /ready, /metrics).",
        epilog="Any config key can be overridden: --section.key VALUE, e.g. --model.path "
        "/models/Qwen3-0.6B --server.port 8001 --cache.backend paged.",
    )
    parser.add_argument("--config", metavar="PATH", help="TOML file (default: $INFER_CONFIG)")
    parser.add_argument("--version", action="version", version=f"infer-core {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    try:
        config = load_config(args.config, overrides)
        logging.basicConfig(level=config.server.log_level.upper(),
                            format="%(levelname)s:     %(message)s", stream=sys.stderr)
        pm = make_plugin_manager(blocked=config.plugins.disable)
        # torch, the engine and the web stack are imported once the config is known to be good
        from infer_core.engine.async_engine import AsyncLLMEngine
        from infer_core.engine.core_client import EngineCoreClient
        from infer_core.engine.llm_engine import LLMEngine
        from infer_core.server.startup import capacity_line, plugin_lines

        for line in plugin_lines(pm):
            log.info(line)
        log.info("loading %s%s", config.model.path, " in the engine process" if config.server.engine_process else "")
        if config.server.engine_process:
            engine: AsyncLLMEngine = EngineCoreClient.spawn(config)
            capacity = engine.info.capacity
        else:
            core = LLMEngine(config, pm)
            engine, capacity = AsyncLLMEngine(core), capacity_line(core)
    except InferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    layout = engine.engine.layout
    log.info("model %s: %s, %s on %s, %s attention", layout.served_model_name,
             engine.engine.model_class.__name__, str(layout.dtype).removeprefix("torch."),
             layout.device, layout.attention_backend)
    log.info(capacity)
    try:
        return serve(engine, config)
    finally:
        if engine.is_running:  # the app's shutdown stops it; this covers a server that never started
            engine.shutdown()


def serve(engine: AsyncLLMEngine, config: EngineConfig) -> int:
    import uvicorn

    from infer_core.server.app import create_app
    from infer_core.server.shutdown import Drain, GracefulServer

    server = config.server
    if server.api_key is None and not _is_loopback(server.host):
        log.warning("listening on %s without server.api_key: anyone who can reach this port can "
                    "use the model; set server.api_key (INFER_SERVER__API_KEY).", server.host)
    app = create_app(engine, config)
    uv_config = uvicorn.Config(
        app, host=server.host, port=server.port, log_level=server.log_level, lifespan="on",
        timeout_graceful_shutdown=WRITE_GRACE_S, server_header=False,
    )
    uv_server = GracefulServer(uv_config, Drain(app.state.server, server.drain_timeout_s))
    uv_server.run()
    return 0 if uv_server.started else 1


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
