"""The plugin registry: built-in kinds first, then every plugin found under the entry-point group ``decoders``.

Set the environment variable ``DECODERS_DISABLE_PLUGINS=1`` to load only the built-ins. A plugin that fails
to import or to register is skipped and reported by name; a plugin that claims a ``kind`` another one
already provides is reported with both names, and the first one keeps the kind.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Annotated, Any, Union

import pluggy
from pluggy import PluginValidationError
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


def discriminated_union(configs: list[type]) -> Any:
    """The pydantic type of "one of these configs, told apart by ``kind``" (the config itself when only one)."""
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[tuple(configs)], Discriminator("kind")]  # noqa: UP007 (a runtime tuple of types)


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name (the entry point's), and the distribution that installed it, if any.

    Args:
        name: the plugin's name.
        distribution: the installed package that declares its entry point (None for code-registered plugins).
        version: that package's version.
    """

    name: str
    distribution: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class GenerateOption:
    """An option a plugin adds to ``decoders generate``: its flag, what turns its value into processor configs, and
    its help (see :func:`decoders.hookspecs.decoders_register_generate_options`)."""

    flag: str
    processors: Any
    help: str
    metavar: str
    plugin: str


@dataclass(frozen=True)
class Preset:
    """A named strategy (as data) and the plugin that registered it."""

    name: str
    strategy: dict[str, Any]
    plugin: str


@dataclass
class Registry:
    """Every registered kind and preset, the loaded plugins, and the problems met while loading them.

    ``manager`` is the pluggy plugin manager, for hooks that run later than registration (e.g. while
    converting a ``GenerationConfig``), never inside the token loop.
    """

    processors: dict[str, Registration] = field(default_factory=dict)
    selectors: dict[str, Registration] = field(default_factory=dict)
    searches: dict[str, Registration] = field(default_factory=dict)
    presets: dict[str, Preset] = field(default_factory=dict)
    generate_options: list[GenerateOption] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    plugins: list[PluginInfo] = field(default_factory=list)
    manager: pluggy.PluginManager | None = field(default=None, repr=False)
    #: the plugin whose hook :meth:`each_plugin` is running (what ``register`` callbacks attribute kinds to)
    calling: str = ""

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

    def register_preset(self, plugin: str, name: Any, strategy: Any) -> None:
        """Add one preset for ``plugin`` (checked when used, once every kind is known)."""
        if not isinstance(name, str) or not name or not isinstance(strategy, dict):
            self.problems.append(
                f"plugin '{plugin}' registered preset {name!r} with {type(strategy).__name__}; call "
                "register(name, strategy_as_a_dict); it is skipped"
            )
        elif name in self.presets:
            self.problems.append(
                f"preset '{name}' is registered by both plugin '{self.presets[name].plugin}' and plugin '{plugin}'; "
                f"'{self.presets[name].plugin}' keeps it"
            )
        else:
            self.presets[name] = Preset(name, strategy, plugin)

    def register_generate_option(
        self, plugin: str, flag: Any, processors: Any, help: str = "", metavar: str = "TEXT"
    ) -> None:
        """Add one ``decoders generate`` option for ``plugin``; record a problem (and skip it) if its flag is not
        ``--name``, ``processors`` is not callable, or another plugin already has the flag."""
        if not (isinstance(flag, str) and re.fullmatch(r"--[a-z0-9][a-z0-9-]*", flag)) or not callable(processors):
            self.problems.append(
                f"plugin '{plugin}' registered the generate option {flag!r} with {type(processors).__name__}; call "
                "register('--lowercase-name', value_to_processors, help=...); it is skipped"
            )
            return
        for other in self.generate_options:
            if other.flag == flag:
                self.problems.append(
                    f"generate option {flag} is registered by both plugin '{other.plugin}' and plugin '{plugin}'; "
                    f"'{other.plugin}' keeps it"
                )
                return
        self.generate_options.append(GenerateOption(flag, processors, str(help), str(metavar), plugin))

    def kinds(self, role: str) -> list[str]:
        """Registered kind names for ``role`` ("processor", "selector" or "search"), in registration order."""
        return list(self._table(role))

    def each_plugin(self, hook: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """Call ``hook`` through the plugin manager once per plugin that implements it: ``(plugin, result)``.

        A plugin that raises yields ``(plugin, exception)`` instead, so one broken plugin is reported by name
        and the others still run.
        """
        manager = self.manager
        if manager is None:
            return
        names = [manager.get_name(plugin) for plugin in manager.get_plugins()]
        for impl in getattr(manager.hook, hook).get_hookimpls():
            others = [manager.get_plugin(n) for n in names if n != impl.plugin_name]
            self.calling = impl.plugin_name
            try:
                results = manager.subset_hook_caller(hook, remove_plugins=others)(**kwargs)
            except Exception as exc:  # a broken plugin must not take the others down
                yield impl.plugin_name, exc
                continue
            yield impl.plugin_name, results[0] if results else None

    @cached_property
    def processor_list_adapter(self) -> TypeAdapter:
        """Validates a list of processor configs (a union discriminated by ``kind``)."""
        return TypeAdapter(list[discriminated_union([r.config for r in self.processors.values()])])

    @cached_property
    def selector_adapter(self) -> TypeAdapter:
        """Validates one selector config."""
        return TypeAdapter(discriminated_union([r.config for r in self.selectors.values()]))

    @cached_property
    def search_adapter(self) -> TypeAdapter:
        """Validates one search config."""
        return TypeAdapter(discriminated_union([r.config for r in self.searches.values()]))


#: the registration hooks, and the role each one registers
_REGISTRATION_HOOKS = {
    "decoders_register_processors": "processor",
    "decoders_register_selectors": "selector",
    "decoders_register_searches": "search",
}


def _register_everything(registry: Registry) -> None:
    """Run each plugin's registration hooks (through the manager, one plugin at a time, so each kind is
    attributed to its plugin and pluggy's calling conventions hold)."""
    for hook, role in _REGISTRATION_HOOKS.items():
        for plugin, outcome in registry.each_plugin(
            hook, register=lambda config, _r=role: registry.register(registry.calling, _r, config)
        ):
            _report_failure(registry, plugin, outcome, f"registering {role}s", "its remaining kinds are skipped")
    for plugin, outcome in registry.each_plugin(
        "decoders_register_presets",
        register=lambda name, strategy: registry.register_preset(registry.calling, name, strategy),
    ):
        _report_failure(registry, plugin, outcome, "registering presets", "its remaining presets are skipped")
    for plugin, outcome in registry.each_plugin(
        "decoders_register_generate_options",
        register=lambda flag, processors, **shown: registry.register_generate_option(registry.calling, flag, processors, **shown),
    ):
        _report_failure(registry, plugin, outcome, "registering generate options", "its remaining options are skipped")


def _report_failure(registry: Registry, plugin: str, outcome: Any, doing: str, consequence: str) -> None:
    if isinstance(outcome, Exception):
        registry.problems.append(
            f"plugin '{plugin}' failed while {doing}: {type(outcome).__name__}: {outcome}; {consequence}"
        )


def _check_hook_names(manager: pluggy.PluginManager, registry: Registry) -> None:
    """Report and unregister plugins with a hook function no spec knows (a misspelled hook name)."""
    while True:
        try:
            manager.check_pending()
            return
        except PluginValidationError as exc:
            name = manager.get_name(exc.plugin)
            registry.problems.append(
                f"plugin '{name}' has a hook decoders does not know: {exc}; check its spelling against "
                f"decoders.hookspecs ({', '.join(sorted(_HOOK_NAMES))}). The plugin is skipped."
            )
            manager.unregister(exc.plugin)
            registry.plugins = [p for p in registry.plugins if p.name != name]


_HOOK_NAMES = [name for name in dir(hookspecs) if name.startswith("decoders_")]


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
    registry = Registry(plugins=[PluginInfo(BUILTIN_NAME, "decoders-lab", _version("decoders-lab"))], manager=manager)
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
            dist = getattr(entry_point, "dist", None)
            registry.plugins.append(
                PluginInfo(entry_point.name, getattr(dist, "name", None), getattr(dist, "version", None))
            )
    for name, plugin in (extra_plugins or {}).items():
        try:
            manager.register(plugin, name=name)
        except ValueError as exc:
            raise PluginError(f"cannot register plugin '{name}': {exc}") from exc
        registry.plugins.append(PluginInfo(name))
    _check_hook_names(manager, registry)
    _register_everything(registry)
    for problem in registry.problems:
        warnings.warn(problem, PluginWarning, stacklevel=2)
    return registry


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


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
        >>> decoders.register_plugin(types.ModuleType("nothing"), "nothing")  # doctest: +ELLIPSIS
        Registry(...)
        >>> decoders.unregister_plugin("nothing")  # doctest: +ELLIPSIS
        Registry(...)
    """
    try:
        hash(plugin)
    except TypeError:
        raise PluginError(
            f"plugin {name!r} is a {type(plugin).__name__}, which pluggy cannot register (it is not hashable): "
            "register a module, a class, or an instance of your own class"
        ) from None
    _extra_plugins[name] = plugin
    return reload_registry()


def unregister_plugin(name: str) -> Registry:
    """Remove a plugin registered with :func:`register_plugin` and rebuild the registry."""
    _extra_plugins.pop(name, None)
    return reload_registry()
