"""The hooks a plugin implements: one per extension point, all named ``infer_register_<what>``.

A plugin is a module (the target of an entry point in the ``infer`` group) that declares the
plugin API it was built for and implements any of these hooks::

    from infer_core import hookimpl

    INFER_PLUGIN_API = 1

    @hookimpl
    def infer_register_scheduler_policies(registry):
        registry.add("shortest_first", "my_pkg.policy:ShortestFirst",
                     options="my_pkg.policy:ShortestFirstOptions",
                     description="Admit the shortest prompts first.")

Each hook receives a registry scoped to the calling plugin (so every spec records its owner)
and returns nothing. Targets are ``"module:attr"`` strings resolved only when the name is
used, so importing a plugin module never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from infer_core.registry import PluginRegistry

hookspec = pluggy.HookspecMarker("infer")


@hookspec
def infer_register_architectures(registry: PluginRegistry) -> None:
    """Register model architectures, named as in ``config.json``'s ``architectures[0]``
    (e.g. ``"LlamaForCausalLM"``); the target is the model class."""


@hookspec
def infer_register_cache_backends(registry: PluginRegistry) -> None:
    """Register KV-cache backends, selected by ``cache.backend``; the target is a
    :class:`infer_core.engine.kv_cache.CacheBackend` subclass."""


@hookspec
def infer_register_scheduler_policies(registry: PluginRegistry) -> None:
    """Register scheduler policies, selected by ``scheduler.policy``; the target is a
    :class:`infer_core.engine.policy.SchedulerPolicy` subclass."""


@hookspec
def infer_register_attention_backends(registry: PluginRegistry) -> None:
    """Register attention backends, selected by ``attention.backend``; the target is the
    backend class that runs attention over the flat batch."""
