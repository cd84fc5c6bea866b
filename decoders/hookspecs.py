"""Hook specifications of the ``decoders`` plugin system (pluggy project name ``decoders``).

A plugin is a module (or object) with functions marked ``@decoders.hookimpl`` whose names match these
specs, advertised by an entry point in the group ``decoders``::

    [project.entry-points.decoders]
    my_plugin = "my_package.plugin"

Hooks run when the registry is built, never inside the per-token loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("decoders")
hookimpl = pluggy.HookimplMarker("decoders")


@hookspec
def decoders_register_processors(register: Callable[[type], None]) -> None:
    """Register processor configs: call ``register(ConfigClass)`` once per kind.

    ``ConfigClass`` subclasses :class:`decoders.ProcessorConfig`, has a ``kind: Literal["name"] = "name"``
    field, and its ``build()`` returns a :class:`decoders.Processor`.
    """


@hookspec
def decoders_register_selectors(register: Callable[[type], None]) -> None:
    """Register selector configs: call ``register(ConfigClass)`` once per kind.

    ``ConfigClass`` subclasses :class:`decoders.SelectorConfig`; its ``build()`` returns a
    :class:`decoders.Selector`.
    """


@hookspec
def decoders_register_searches(register: Callable[[type], None]) -> None:
    """Register search configs: call ``register(ConfigClass)`` once per kind.

    ``ConfigClass`` subclasses :class:`decoders.SearchConfig`; its ``build()`` returns a
    :class:`decoders.Search`.
    """


@hookspec
def decoders_register_presets(register: Callable[[str, dict[str, Any]], None]) -> None:
    """Register named strategies: call ``register(name, strategy)`` once per preset.

    ``strategy`` is a strategy as data (what a strategy file holds: ``processors``, ``selector``, ``search``,
    and a one-line ``description``). Users then pass ``name`` wherever a preset is accepted
    (``--strategy name``, ``decoders.generate(prompt, "name")``).
    """


@hookspec
def decoders_generation_config(fields: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]] | None:
    """Map ``GenerationConfig`` fields this plugin understands to processors, for
    :meth:`decoders.Strategy.from_generation_config`.

    Args:
        fields: the config's fields that are set (``to_diff_dict``; custom attributes included).

    Returns:
        ``(field names used, processor configs as dicts)`` — the processors run after the built-in ones, in the
        order given — or None when no field concerns this plugin.
    """


@hookspec
def decoders_register_generate_options(register: Callable[..., None]) -> None:
    """Add options to ``decoders generate`` (in the spirit of llm's ``register_commands``): call
    ``register(flag, processors, help="...", metavar="TEXT")`` once per option.

    Args:
        register: ``register(flag, processors, *, help, metavar)``. ``flag`` is the option, e.g. ``"--regex"`` (not
            one ``generate`` already has); it takes one text value. ``processors(value)`` is called with that value
            when the user gives the option and returns processor configs as dicts, appended to the strategy's
            processors whichever way it was chosen (preset, file, flags, ``--model-defaults``); a ``ValueError``
            it raises is shown as the option's error. ``help`` and ``metavar`` are shown by ``--help``.

    Example::

        @decoders.hookimpl
        def decoders_register_generate_options(register):
            register("--regex", lambda value: [{"kind": "regex", "regex": value}], help="Only output text matching this regex.")
    """
