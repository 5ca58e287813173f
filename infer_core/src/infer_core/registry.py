"""Registries of named, lazily imported plugin components.

A plugin's hook receives a :class:`PluginRegistry` (a registry scoped to that plugin) and calls
``add(name, "module:attr", options=..., description=...)``. The target is imported only when
the name is used (:meth:`Spec.load`), so listing plugins never imports torch.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from infer_core.errors import (
    ConfigError,
    DuplicateNameError,
    PluginError,
    PluginLoadError,
    UnknownNameError,
)


@dataclass(frozen=True)
class PluginInfo:
    """Who registered something: the plugin (entry-point name) and its distribution."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    api_version: int | None = None
    builtin: bool = False

    @property
    def dist_label(self) -> str:
        """``infer-cache-paged 0.1.0`` (or the plugin name when it has no distribution)."""
        if self.distribution is None:
            return self.name
        return f"{self.distribution} {self.version}" if self.version else self.distribution

    @property
    def label(self) -> str:
        """``infer_cache_paged (infer-cache-paged 0.1.0)``."""
        if self.distribution is None:
            return self.name
        return f"{self.name} ({self.dist_label})"


def import_target(target: str) -> Any:
    """Import ``"package.module:attr"`` (attr may be dotted) and return the attribute."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def _check_target(target: str, what: str) -> None:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"{what} must be a 'package.module:attr' string, got {target!r}.")


@dataclass(frozen=True)
class Spec:
    """One registered component: its name, lazy target, options model and owner."""

    kind: str
    name: str
    target: str
    owner: PluginInfo
    options: type[BaseModel] | str | None = None
    description: str = ""

    def load(self) -> Any:
        """Import and return the target (a class or factory)."""
        return self._resolve(self.target, "target")

    def options_model(self) -> type[BaseModel] | None:
        if self.options is None or isinstance(self.options, type):
            return self.options
        return self._resolve(self.options, "options model")

    def validate_options(self, raw: Mapping[str, Any], section: str) -> BaseModel | None:
        """Validate a ``[<section>.options]`` table with this component's options model."""
        model = self.options_model()
        if model is None:
            if raw:
                keys = ", ".join(sorted(raw))
                raise ConfigError(
                    f"{self.kind} '{self.name}' ({self.owner.dist_label}) takes no options, "
                    f"but [{section}.options] sets: {keys}."
                )
            return None
        try:
            return model.model_validate(dict(raw))
        except ValidationError as exc:
            raise ConfigError(
                f"invalid [{section}.options] for {self.kind} '{self.name}' "
                f"({self.owner.dist_label}): {format_validation_errors(exc)}"
            ) from None

    def _resolve(self, target: str, what: str) -> Any:
        try:
            return import_target(target)
        except Exception as exc:
            raise PluginLoadError(
                f"{self.kind} '{self.name}' from {self.owner.label} cannot be loaded: its {what} "
                f"'{target}' failed to import: {type(exc).__name__}: {exc}"
            ) from exc


def format_validation_errors(exc: ValidationError) -> str:
    """``watermark: Input should be a valid number; block_size: ...`` from a pydantic error."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


@dataclass(frozen=True)
class KnownName:
    """A first-party name and the distribution that provides it (for install hints)."""

    distribution: str
    plugin: str


@dataclass
class Registry:
    """All components of one kind (architectures, cache backends, ...), by name.

    ``known`` maps first-party names to the distribution providing them; ``disabled`` and
    ``loaded`` are plugin names (``loaded`` to distribution labels): together they let an
    unknown name's message say what to install, upgrade or re-enable.
    """

    kind: str
    config_key: str | None = None
    known: Mapping[str, KnownName] = field(default_factory=dict)
    disabled: frozenset[str] = frozenset()
    loaded: Mapping[str, str] = field(default_factory=dict)
    _specs: dict[str, Spec] = field(default_factory=dict)

    def add(self, spec: Spec) -> None:
        if spec.kind != self.kind:
            raise PluginError(f"a {spec.kind} spec cannot be added to the {self.kind} registry.")
        other = self._specs.get(spec.name)
        if other is not None:
            if other.owner == spec.owner:
                raise DuplicateNameError(
                    f"{self.kind} '{spec.name}' is registered twice by {spec.owner.label}; "
                    f"each name may be registered once."
                )
            raise DuplicateNameError(
                f"{self.kind} '{spec.name}' is registered by both {other.owner.label} and "
                f"{spec.owner.label}. Uninstall one or set "
                f"INFER_DISABLE_PLUGINS={spec.owner.name}."
            )
        self._specs[spec.name] = spec

    def scoped(self, owner: PluginInfo) -> PluginRegistry:
        return PluginRegistry(self, owner)

    def get(self, name: str, *, where: str | None = None) -> Spec:
        """The spec registered as ``name``; a helpful :class:`UnknownNameError` otherwise.

        ``where`` says where the name came from (``"config cache.backend"``); it defaults to
        this registry's config key.
        """
        spec = self._specs.get(name)
        if spec is None:
            raise UnknownNameError(self._unknown_message(name, where))
        return spec

    def names(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[Spec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def installed_summary(self) -> str:
        """``contiguous (infer-core 0.1.0), paged, prefix (infer-cache-paged 0.1.0)``."""
        groups: dict[str, list[str]] = {}
        for spec in self._specs.values():
            groups.setdefault(spec.owner.dist_label, []).append(spec.name)
        if not groups:
            return "none"
        return ", ".join(f"{', '.join(sorted(names))} ({label})" for label, names in groups.items())

    def _unknown_message(self, name: str, where: str | None) -> str:
        origin = where or (f"config {self.config_key}" if self.config_key else None)
        head = f"no {self.kind} named '{name}'" + (f" (from {origin})" if origin else "")
        head += f". Installed: {self.installed_summary()}."
        known = self.known.get(name)
        if known is not None and known.plugin in self.disabled:
            return (
                f"{head} '{name}' is provided by {known.distribution}, which is installed but "
                f"disabled by INFER_DISABLE_PLUGINS or [plugins] disable; remove "
                f"'{known.plugin}' from it to use '{name}'."
            )
        if known is not None and known.plugin in self.loaded:
            return (
                f"{head} '{name}' is provided by {known.distribution}, but the installed "
                f"{self.loaded[known.plugin]} does not register it; upgrade it: "
                f"pip install -U {known.distribution}"
            )
        if known is not None:
            return (
                f"{head} '{name}' is provided by {known.distribution}: "
                f"pip install {known.distribution}"
            )
        candidates = dict.fromkeys([*self.names(), *self.known])
        close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
        hint = ""
        if close:
            hint = " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        return f"{head}{hint} Run 'infer plugins' to see what is installed."


@dataclass(frozen=True)
class PluginRegistry:
    """What a plugin's hook receives: a registry that records the calling plugin as owner."""

    registry: Registry
    owner: PluginInfo

    @property
    def kind(self) -> str:
        return self.registry.kind

    def add(
        self,
        name: str,
        target: str,
        *,
        options: type[BaseModel] | str | None = None,
        description: str = "",
    ) -> None:
        """Register ``name`` → ``"module:attr"`` with an optional pydantic options model
        (a class or a ``"module:attr"`` string) and a one-line description."""
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"{self.owner.label} registered a {self.kind} with an empty or non-string name."
            )
        _check_target(target, f"the target of {self.kind} '{name}' from {self.owner.label}")
        if isinstance(options, str):
            _check_target(options, f"the options of {self.kind} '{name}' from {self.owner.label}")
        elif options is not None and not (
            isinstance(options, type) and issubclass(options, BaseModel)
        ):
            raise PluginError(
                f"the options of {self.kind} '{name}' from {self.owner.label} must be a pydantic "
                f"model class or a 'module:attr' string, got {options!r}."
            )
        self.registry.add(
            Spec(
                kind=self.kind,
                name=name,
                target=target,
                owner=self.owner,
                options=options,
                description=" ".join(description.split()),
            )
        )
