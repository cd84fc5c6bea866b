"""Hook specifications of the ``decoders`` plugin system (pluggy project name ``decoders``).

A plugin is a module (or object) with functions marked ``@decoders.hookimpl`` whose names match these
specs, advertised by an entry point in the group ``decoders``::

    [project.entry-points.decoders]
    my_plugin = "my_package.plugin"

Hooks run when the registry is built, never inside the per-token loop.
"""

from __future__ import annotations

from collections.abc import Callable

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
