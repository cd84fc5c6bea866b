"""The plugin registry: built-in kinds first, then every plugin found under the entry-point group ``decoders``.

Set the environment variable ``DECODERS_DISABLE_PLUGINS=1`` to load only the built-ins. A plugin that fails
to import or to register is skipped and reported by name; a plugin that claims a ``kind`` another one
already provides is reported with both names, and the first one keeps the kind.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import entry_points
from typing import Annotated, Any, Union

import pluggy
from pydantic import Discriminator, TypeAdapter

from decoders import builtins, hookspecs
from decoders.config import ComponentConfig, ProcessorConfig, SearchConfig, SelectorConfig
from decoders.errors import PluginError

ENTRY_POINT_GROUP = "decoders"
DISABLE_ENV = "DECODERS_DISABLE_PLUGINS"
BUILTIN_NAME = "decoders (built-in)"


class PluginWarning(UserWarning):
    """A plugin was skipped: it failed to load or clashed with another plugin."""


@dataclass(frozen=True)
class Registration:
    """One registered kind: its config class and the plugin that provides it."""

    kind: str
    config: type[ComponentConfig]
    plugin: str
    role: str  # "processor", "selector" or "search"


def _discriminated(configs: list[type]) -> Any:
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[tuple(configs)], Discriminator("kind")]  # noqa: UP007 (a runtime tuple of types)


@dataclass
class Registry:
    """Every registered processor, selector and search kind, and the problems met while loading plugins."""

    processors: dict[str, Registration] = field(default_factory=dict)
    selectors: dict[str, Registration] = field(default_factory=dict)
    searches: dict[str, Registration] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)

    def _table(self, role: str) -> dict[str, Registration]:
        return {"processor": self.processors, "selector": self.selectors, "search": self.searches}[role]

    def register(self, plugin: str, role: str, config: Any) -> None:
        """Add one config class for ``plugin``; record a problem (and skip it) if it is not valid or clashes."""
        base = {"processor": ProcessorConfig, "selector": SelectorConfig, "search": SearchConfig}[role]
        if not (isinstance(config, type) and issubclass(config, base)):
            self.problems.append(
                f"plugin '{plugin}' registered {config!r} as a {role}, but it is not a subclass of "
                f"decoders.{base.__name__}; it is skipped"
            )
            return
        kind = config.kind_name()
        if not isinstance(kind, str) or not kind:
            self.problems.append(
                f"plugin '{plugin}' registered {config.__name__} without a default kind; declare "
                f'kind: Literal["name"] = "name"; it is skipped'
            )
            return
        table = self._table(role)
        if kind in table:
            self.problems.append(
                f"{role} kind '{kind}' is claimed by both plugin '{table[kind].plugin}' and plugin '{plugin}'; "
                f"'{table[kind].plugin}' keeps it. Uninstall one of them, or rename the kind in one."
            )
            return
        table[kind] = Registration(kind, config, plugin, role)

    def kinds(self, role: str) -> list[str]:
        """Registered kind names for ``role`` ("processor", "selector" or "search"), in registration order."""
        return list(self._table(role))

    @cached_property
    def processor_list_adapter(self) -> TypeAdapter:
        """Validates a list of processor configs (a union discriminated by ``kind``)."""
        return TypeAdapter(list[_discriminated([r.config for r in self.processors.values()])])

    @cached_property
    def selector_adapter(self) -> TypeAdapter:
        """Validates one selector config."""
        return TypeAdapter(_discriminated([r.config for r in self.selectors.values()]))

    @cached_property
    def search_adapter(self) -> TypeAdapter:
        """Validates one search config."""
        return TypeAdapter(_discriminated([r.config for r in self.searches.values()]))


def _call_hooks(manager: pluggy.PluginManager, registry: Registry) -> None:
    """Run each plugin's registration hooks separately, so each kind is attributed to its plugin."""
    for role, caller in (
        ("processor", manager.hook.decoders_register_processors),
        ("selector", manager.hook.decoders_register_selectors),
        ("search", manager.hook.decoders_register_searches),
    ):
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            try:
                impl.function(register=lambda config, _p=impl.plugin_name, _r=role: registry.register(_p, _r, config))
            except Exception as exc:  # a broken plugin must not take the others down
                registry.problems.append(
                    f"plugin '{impl.plugin_name}' failed while registering {role}s: {type(exc).__name__}: {exc}; "
                    "its remaining kinds are skipped"
                )


def build_registry(extra_plugins: dict[str, object] | None = None, autoload: bool | None = None) -> Registry:
    """Build a fresh registry: built-ins, then entry-point plugins (unless disabled), then ``extra_plugins``.

    Args:
        extra_plugins: ``{name: module_or_object}`` registered in code, after the entry points.
        autoload: load entry points; default: unless ``DECODERS_DISABLE_PLUGINS`` is set to a true value.
    """
    if autoload is None:
        autoload = os.environ.get(DISABLE_ENV, "").strip().lower() in ("", "0", "false", "no")
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    manager.register(builtins, name=BUILTIN_NAME)
    registry = Registry(plugins=[BUILTIN_NAME])
    if autoload:
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                plugin = entry_point.load()
                manager.register(plugin, name=entry_point.name)
            except Exception as exc:
                registry.problems.append(
                    f"plugin '{entry_point.name}' (entry point '{entry_point.value}') failed to load: "
                    f"{type(exc).__name__}: {exc}; it is skipped. Fix or uninstall it "
                    f"(or set {DISABLE_ENV}=1 to load no plugins)."
                )
                continue
            registry.plugins.append(entry_point.name)
    for name, plugin in (extra_plugins or {}).items():
        try:
            manager.register(plugin, name=name)
        except ValueError as exc:
            raise PluginError(f"cannot register plugin '{name}': {exc}") from exc
        registry.plugins.append(name)
    _call_hooks(manager, registry)
    for problem in registry.problems:
        warnings.warn(problem, PluginWarning, stacklevel=2)
    return registry


_registry: Registry | None = None
_extra_plugins: dict[str, object] = {}


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry(_extra_plugins)
    return _registry


def reload_registry() -> Registry:
    """Forget the registry and build it again (after installing or registering plugins)."""
    global _registry
    _registry = None
    return get_registry()


def register_plugin(plugin: object, name: str) -> Registry:
    """Register a plugin module or object in code (no entry point needed) and rebuild the registry.

    Example:
        >>> import decoders, types
        >>> decoders.register_plugin(types.SimpleNamespace(), "nothing")  # doctest: +ELLIPSIS
        Registry(...)
    """
    _extra_plugins[name] = plugin
    return reload_registry()


def unregister_plugin(name: str) -> Registry:
    """Remove a plugin registered with :func:`register_plugin` and rebuild the registry."""
    _extra_plugins.pop(name, None)
    return reload_registry()
