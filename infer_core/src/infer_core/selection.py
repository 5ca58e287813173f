"""Resolve the plugin names a config chooses into specs and validated options.

This is the step between :func:`infer_core.config.load_config` (types and combinations) and
building the engine: every name is looked up in the plugin manager's registries and every
``options`` table is validated by the chosen plugin's options model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from infer_core.config import EngineConfig
from infer_core.plugins import InferPluginManager
from infer_core.registry import Spec

AUTO = "auto"


@dataclass(frozen=True)
class Selected:
    """A chosen component: its spec and its validated options (``None`` if it takes none)."""

    spec: Spec
    options: BaseModel | None

    def options_dict(self) -> dict[str, Any]:
        return {} if self.options is None else self.options.model_dump(mode="json")


@dataclass(frozen=True)
class PluginSelection:
    """What a config selects. ``attention`` is ``None`` for ``auto``, which the engine
    resolves per device when it starts."""

    cache: Selected
    scheduler: Selected
    attention: Selected | None


def select_plugins(config: EngineConfig, pm: InferPluginManager) -> PluginSelection:
    """Look up ``cache.backend``, ``scheduler.policy`` and ``attention.backend`` and validate
    their options; raises :class:`~infer_core.errors.PluginError` or
    :class:`~infer_core.errors.ConfigError` with one sentence saying what to change."""
    cache = _select(pm.cache_backends.get(config.cache.backend), config.cache.options, "cache")
    scheduler = _select(
        pm.scheduler_policies.get(config.scheduler.policy), config.scheduler.options, "scheduler"
    )
    attention = None
    if config.attention.backend != AUTO:
        attention = _select(
            pm.attention_backends.get(config.attention.backend), config.attention.options,
            "attention",
        )
    return PluginSelection(cache=cache, scheduler=scheduler, attention=attention)


def _select(spec: Spec, raw: dict[str, Any], section: str) -> Selected:
    return Selected(spec=spec, options=spec.validate_options(raw, section))
