"""The plugin manager: built-in plugins first, then the ``infer`` entry-point group.

There is no module-global manager: the engine builds one with :func:`make_plugin_manager`
and keeps it; tests build their own. Environment switches:

- ``INFER_DISABLE_PLUGINS=a,b`` (and ``[plugins] disable`` in the config) skip plugins by name;
- ``INFER_TRACE_PLUGINS=1`` prints each hook call to stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from types import MappingProxyType
from typing import Any, Literal

import pluggy

from infer_core import hookspecs
from infer_core.errors import InferError, PluginError, PluginLoadError
from infer_core.registry import KnownName, PluginInfo, Registry, Spec
from infer_core.version import PLUGIN_API_VERSION, __version__

ENTRY_POINT_GROUP = "infer"
SUPPORTED_PLUGIN_API_VERSIONS = frozenset({PLUGIN_API_VERSION})
BUILTIN_PLUGINS = ("infer_core.builtins",)


@dataclass(frozen=True)
class RegistryKind:
    hook: str
    kind: str
    attribute: str
    config_key: str | None


REGISTRY_KINDS = (
    RegistryKind("infer_register_architectures", "architecture", "architectures", None),
    RegistryKind("infer_register_cache_backends", "cache backend", "cache_backends", "cache.backend"),
    RegistryKind(
        "infer_register_scheduler_policies", "scheduler policy", "scheduler_policies",
        "scheduler.policy",
    ),
    RegistryKind(
        "infer_register_attention_backends", "attention backend", "attention_backends",
        "attention.backend",
    ),
)


def _first_party(distribution: str, plugin: str, *names: str) -> dict[str, KnownName]:
    return {name: KnownName(distribution, plugin) for name in names}


# What the first-party distributions provide, so a lookup of a name whose distribution is not
# installed can say what to install. Immutable: this is a table, not state.
FIRST_PARTY_NAMES: Mapping[str, Mapping[str, KnownName]] = MappingProxyType({
    "architecture": MappingProxyType({
        **_first_party("infer-models-llama", "infer_models_llama", "LlamaForCausalLM"),
        **_first_party("infer-models-qwen3", "infer_models_qwen3", "Qwen3ForCausalLM"),
        **_first_party("infer-models-gemma3", "infer_models_gemma3", "Gemma3ForCausalLM"),
    }),
    "cache backend": MappingProxyType(
        _first_party("infer-cache-paged", "infer_cache_paged", "paged", "prefix")
    ),
    "scheduler policy": MappingProxyType(
        _first_party(
            "infer-sched-policies", "infer_sched_policies",
            "round_robin", "priority", "prefill_first", "decode_first", "static",
        )
    ),
    "attention backend": MappingProxyType({}),
})


@dataclass(frozen=True)
class PluginStatus:
    """A plugin as ``infer plugins`` reports it."""

    info: PluginInfo
    state: Literal["loaded", "disabled", "error"]
    error: str | None = None


class InferPluginManager(pluggy.PluginManager):
    """pluggy's manager plus infer's registries and per-plugin provenance."""

    def __init__(self, blocked: frozenset[str]) -> None:
        super().__init__("infer")
        self.add_hookspecs(hookspecs)
        self.blocked_names = blocked
        self.infos: dict[str, PluginInfo] = {}
        self.statuses: dict[str, PluginStatus] = {}
        self.errors: list[PluginError] = []
        self.registries: dict[str, Registry] = {}

    # The registries, by the names the rest of the code uses.
    @property
    def architectures(self) -> Registry:
        return self.registries["architecture"]

    @property
    def cache_backends(self) -> Registry:
        return self.registries["cache backend"]

    @property
    def scheduler_policies(self) -> Registry:
        return self.registries["scheduler policy"]

    @property
    def attention_backends(self) -> Registry:
        return self.registries["attention backend"]

    def registrations(self, plugin: str) -> dict[str, list[Spec]]:
        """What ``plugin`` registered, by kind."""
        return {
            kind: [spec for spec in registry if spec.owner.name == plugin]
            for kind, registry in self.registries.items()
        }


def disabled_from_env(env: Mapping[str, str]) -> set[str]:
    return {name.strip() for name in env.get("INFER_DISABLE_PLUGINS", "").split(",") if name.strip()}


def make_plugin_manager(
    *,
    autoload: bool = True,
    blocked: Iterable[str] = (),
    plugins: Sequence[object] = (),
    env: Mapping[str, str] | None = None,
    on_error: Literal["raise", "collect"] = "raise",
) -> InferPluginManager:
    """Build a plugin manager: built-ins, then ``plugins`` (objects registered in-process,
    e.g. by tests), then the ``infer`` entry points; then fill the registries.

    ``on_error="collect"`` records load errors in ``pm.errors`` instead of raising, so that
    ``infer plugins`` can show every problem at once.
    """
    env = os.environ if env is None else env
    pm = InferPluginManager(frozenset(set(blocked) | disabled_from_env(env)))
    trace = env.get("INFER_TRACE_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}

    def fail(error: PluginError, name: str | None = None) -> None:
        if on_error == "raise":
            raise error
        pm.errors.append(error)
        if name is not None and name in pm.statuses:
            pm.statuses[name] = PluginStatus(pm.statuses[name].info, "error", str(error))

    for module_name in BUILTIN_PLUGINS:
        info = PluginInfo(
            name="infer_core", module=module_name, distribution="infer-core",
            version=__version__, api_version=PLUGIN_API_VERSION, builtin=True,
        )
        if info.name in pm.blocked_names:
            pm.statuses[info.name] = PluginStatus(info, "disabled")
            continue
        _register(pm, importlib.import_module(module_name), info, fail)

    for obj in plugins:
        name = getattr(obj, "__name__", None) or type(obj).__name__
        info = PluginInfo(
            name=name, module=getattr(obj, "__module__", None) or name,
            api_version=getattr(obj, "INFER_PLUGIN_API", None),
        )
        _register(pm, obj, info, fail)

    if autoload:
        _load_entry_points(pm, fail)

    _check_hooks(pm, fail)
    _fill_registries(pm, trace, fail)
    return pm


def _check_hooks(pm: InferPluginManager, fail: Any) -> None:
    """Reject implementations of hooks this infer-core does not define (typos, newer APIs)."""
    known = ", ".join(k.hook for k in REGISTRY_KINDS)
    for name, caller in list(vars(pm.hook).items()):
        if caller.spec is not None:
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            info = pm.infos[impl.plugin_name]
            pm.unregister(name=impl.plugin_name)
            del pm.infos[impl.plugin_name]
            fail(PluginLoadError(
                f"plugin {info.label} implements '{name}', a hook this infer-core does not "
                f"define (known hooks: {known}). Update the plugin or infer-core, or start "
                f"without it: INFER_DISABLE_PLUGINS={info.name}."
            ), info.name)


def _check_api(info: PluginInfo) -> PluginLoadError | None:
    declared = info.api_version
    supported = ", ".join(str(v) for v in sorted(SUPPORTED_PLUGIN_API_VERSIONS))
    if declared is None:
        return PluginLoadError(
            f"plugin {info.label} does not declare the plugin API it was built for; add "
            f"INFER_PLUGIN_API = {PLUGIN_API_VERSION} to module '{info.module}', or start "
            f"without it: INFER_DISABLE_PLUGINS={info.name}."
        )
    if declared not in SUPPORTED_PLUGIN_API_VERSIONS:
        return PluginLoadError(
            f"plugin {info.label} was built for infer plugin API {declared!r}, but infer-core "
            f"{__version__} supports plugin API {supported}. Install a version of "
            f"{info.distribution or info.name} built for plugin API {supported}, or start "
            f"without it: INFER_DISABLE_PLUGINS={info.name}."
        )
    return None


def _register(pm: InferPluginManager, obj: Any, info: PluginInfo, fail: Any) -> None:
    if info.name in pm.infos:
        other = pm.infos[info.name]
        fail(PluginError(
            f"two plugins are named '{info.name}': {other.label} and {info.label}. "
            f"Plugin names must be unique; uninstall one."
        ))
        return
    pm.statuses[info.name] = PluginStatus(info, "loaded")
    error = _check_api(info)
    if error is not None:
        fail(error, info.name)
        return
    try:
        pm.register(obj, name=info.name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        fail(PluginLoadError(
            f"plugin {info.label} cannot be registered: {exc}. To start without it: "
            f"INFER_DISABLE_PLUGINS={info.name}."
        ), info.name)
        return
    pm.infos[info.name] = info


def _installed_entry_points() -> dict[str, list[metadata.EntryPoint]]:
    """Entry points of the ``infer`` group by name, one per distribution."""
    by_name: dict[str, list[metadata.EntryPoint]] = {}
    seen: set[tuple[str, str]] = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else ""
        if (ep.name, dist) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, dist))
        by_name.setdefault(ep.name, []).append(ep)
    return by_name


def _entry_point_info(ep: metadata.EntryPoint, api_version: int | None = None) -> PluginInfo:
    dist = ep.dist
    return PluginInfo(
        name=ep.name,
        module=ep.value,
        distribution=dist.metadata["Name"] if dist is not None else None,
        version=dist.version if dist is not None else None,
        api_version=api_version,
    )


def _load_entry_points(pm: InferPluginManager, fail: Any) -> None:
    for name, eps in sorted(_installed_entry_points().items()):
        if len(eps) > 1:
            labels = " and ".join(_entry_point_info(ep).dist_label for ep in eps)
            fail(PluginError(
                f"the infer plugin name '{name}' is declared by several installed "
                f"distributions: {labels}. Uninstall all but one."
            ))
            continue
        ep = eps[0]
        info = _entry_point_info(ep)
        if name in pm.blocked_names:
            pm.statuses[name] = PluginStatus(info, "disabled")
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            pm.statuses[name] = PluginStatus(info, "loaded")
            error = PluginLoadError(
                f"error importing plugin '{name}' ({info.dist_label}): "
                f"{type(exc).__name__}: {exc}. To start without it: INFER_DISABLE_PLUGINS={name}."
            )
            error.__cause__ = exc
            fail(error, name)
            continue
        info = _entry_point_info(ep, getattr(plugin, "INFER_PLUGIN_API", None))
        _register(pm, plugin, info, fail)


def _fill_registries(pm: InferPluginManager, trace: bool, fail: Any) -> None:
    disabled = frozenset(n for n, s in pm.statuses.items() if s.state == "disabled")
    for rk in REGISTRY_KINDS:
        registry = Registry(
            kind=rk.kind, config_key=rk.config_key,
            known=FIRST_PARTY_NAMES[rk.kind], disabled=disabled,
            loaded=MappingProxyType({n: i.dist_label for n, i in pm.infos.items()}),
        )
        pm.registries[rk.kind] = registry
        for impl in getattr(pm.hook, rk.hook).get_hookimpls():
            info = pm.infos[impl.plugin_name]
            if trace:
                print(f"infer: {rk.hook}() -> {info.label}", file=sys.stderr)
            try:
                impl.function(**({"registry": registry.scoped(info)} if impl.argnames else {}))
            except InferError as exc:
                fail(exc if isinstance(exc, PluginError) else PluginError(str(exc)), info.name)
            except Exception as exc:
                error = PluginLoadError(
                    f"plugin {info.label} failed in {rk.hook}: {type(exc).__name__}: {exc}. "
                    f"To start without it: INFER_DISABLE_PLUGINS={info.name}."
                )
                error.__cause__ = exc
                fail(error, info.name)
