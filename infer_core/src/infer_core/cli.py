"""The ``infer`` command: ``infer plugins`` and ``infer config``.

User errors (a bad config, an unknown plugin name, a plugin that fails to import) print one
``error: ...`` line on stderr and exit with status 2; no stack trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from infer_core.config import EngineConfig, config_to_dict, load_config, to_toml
from infer_core.errors import InferError
from infer_core.plugins import InferPluginManager, make_plugin_manager
from infer_core.selection import PluginSelection, select_plugins
from infer_core.version import PLUGIN_API_VERSION, __version__

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infer", description="infer: a fast LLM inference engine for small dense models."
    )
    parser.add_argument("--version", action="version", version=f"infer-core {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plugins = commands.add_parser(
        "plugins", help="list installed plugins and what they register",
        description="List every plugin, its distribution and version, the plugin API it was "
        "built for, what it registers, and any load error.",
    )
    plugins.add_argument("--json", action="store_true", help="print JSON")

    config = commands.add_parser(
        "config", help="print the effective configuration",
        description="Print the configuration after merging defaults < TOML file < INFER_* "
        "environment < --section.key overrides, with every plugin's options validated.",
        epilog="Overrides: --section.key VALUE, e.g. --cache.backend paged --cache.block_size 32.",
    )
    config.add_argument("--config", metavar="PATH", help="TOML file (default: $INFER_CONFIG)")
    config.add_argument("--json", action="store_true", help="print JSON")
    config.add_argument("--show-secrets", action="store_true", help="do not mask server.api_key")

    debug = commands.add_parser("debug", help="debugging tools")
    debug_commands = debug.add_subparsers(dest="debug_command", required=True, metavar="TOOL")
    diff = debug_commands.add_parser(
        "diff", help="per-layer error of our model against transformers",
        description="Run one prompt through our model and through transformers with the same "
        "weights; print each decoder layer's and the logits' max abs and relative error.",
    )
    diff.add_argument("--model", required=True, metavar="DIR", help="Hugging Face model directory")
    source = diff.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text, encoded with the model's tokenizer.json")
    source.add_argument("--token-ids", help="comma-separated token ids")
    diff.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "config":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "plugins":
            return cmd_plugins(args.json)
        if args.command == "debug":
            return cmd_debug_diff(args.model, args.prompt, args.token_ids, args.dtype)
        return cmd_config(args.config, rest, args.json, args.show_secrets)
    except InferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


# -- infer plugins ---------------------------------------------------------------------------


def plugins_report(pm: InferPluginManager) -> dict[str, Any]:
    plugins = []
    for name, status in pm.statuses.items():
        info = status.info
        registers = {
            kind: [
                {
                    "name": spec.name,
                    "target": spec.target,
                    "options": _options_label(spec.options),
                    "description": spec.description,
                }
                for spec in specs
            ]
            for kind, specs in pm.registrations(name).items()
            if specs
        }
        plugins.append({
            "name": name,
            "distribution": info.distribution,
            "version": info.version,
            "api_version": info.api_version,
            "builtin": info.builtin,
            "module": info.module,
            "state": status.state,
            "error": status.error,
            "registers": registers,
        })
    return {
        "infer_core_version": __version__,
        "plugin_api_version": PLUGIN_API_VERSION,
        "plugins": plugins,
        "errors": [str(e) for e in pm.errors],
    }


def _options_label(options: Any) -> str | None:
    if options is None or isinstance(options, str):
        return options
    return f"{options.__module__}:{options.__qualname__}"


def cmd_plugins(as_json: bool) -> int:
    pm = make_plugin_manager(on_error="collect")
    report = plugins_report(pm)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_plugins(report))
    return 1 if report["errors"] else 0


def format_plugins(report: dict[str, Any]) -> str:
    lines = [f"infer-core {report['infer_core_version']} (plugin API {report['plugin_api_version']})"]
    for plugin in report["plugins"]:
        dist = plugin["distribution"] or "(no distribution)"
        version = f" {plugin['version']}" if plugin["version"] else ""
        api = plugin["api_version"] if plugin["api_version"] is not None else "?"
        flags = ", built in" if plugin["builtin"] else ""
        state = "" if plugin["state"] == "loaded" else f" [{plugin['state']}]"
        lines.append(f"\n{plugin['name']}  {dist}{version}  (plugin API {api}{flags}){state}")
        if plugin["error"]:
            lines.append(f"  error: {plugin['error']}")
        for kind, specs in plugin["registers"].items():
            for spec in specs:
                lines.append(f"  {kind:<18} {spec['name']:<20} {spec['description']}")
        if plugin["state"] == "loaded" and not plugin["registers"]:
            lines.append("  (registers nothing yet)")
    if report["errors"]:
        lines.append("\nerrors:")
        lines.extend(f"  {e}" for e in report["errors"])
    return "\n".join(lines)


# -- infer config ----------------------------------------------------------------------------


def effective_config(
    config: EngineConfig, selection: PluginSelection, *, reveal_secrets: bool = False
) -> dict[str, Any]:
    """The merged config with each plugin's options shown after validation (defaults filled)."""
    data = config_to_dict(config, reveal_secrets=reveal_secrets)
    data["cache"]["options"] = selection.cache.options_dict()
    data["scheduler"]["options"] = selection.scheduler.options_dict()
    if selection.attention is not None:
        data["attention"]["options"] = selection.attention.options_dict()
    return data


def cmd_config(path: str | None, overrides: list[str], as_json: bool, reveal: bool) -> int:
    config = load_config(path, overrides)
    pm = make_plugin_manager(blocked=config.plugins.disable)
    data = effective_config(config, select_plugins(config, pm), reveal_secrets=reveal)
    print(json.dumps(data, indent=2) if as_json else to_toml(data), end="" if not as_json else "\n")
    return 0


# -- infer debug diff --------------------------------------------------------------------------


def cmd_debug_diff(model: str, prompt: str | None, token_ids: str | None, dtype: str) -> int:
    from infer_core.debug import diff_against_transformers, encode_prompt, format_diff

    if token_ids is not None:
        try:
            ids = [int(t) for t in token_ids.split(",") if t.strip()]
        except ValueError:
            raise InferError(f"--token-ids must be comma-separated integers, got {token_ids!r}.") from None
    else:
        ids = encode_prompt(model, prompt or "")
    if not ids:
        raise InferError("the prompt is empty; give --prompt text or --token-ids.")
    print(f"{len(ids)} prompt tokens, {dtype}")
    print(format_diff(diff_against_transformers(model, ids, dtype)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
