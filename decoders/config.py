"""Base classes for processor, selector and search configs (pydantic), the schema every ``kind`` follows."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from decoders.processors.base import Processor
from decoders.selectors import Selector

if TYPE_CHECKING:
    from decoders.searches.base import Search


class ComponentConfig(BaseModel):
    """A frozen, strict config with a ``kind`` tag and a ``build()`` method."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: str
    #: one line shown by ``decoders plugins`` (defaults to the first docstring line)
    summary: ClassVar[str] = ""

    @classmethod
    def kind_name(cls) -> str:
        """The ``kind`` tag of this config class (the default of its ``kind`` field)."""
        return cls.model_fields["kind"].default

    def create(self):
        """:meth:`build`, with the built object's ``kind`` set to this config's: the config is the one place a
        kind is declared."""
        component = self.build()
        component.kind = self.kind
        return component

    @classmethod
    def describe(cls) -> str:
        """One line describing this kind."""
        return cls.summary or (cls.__doc__ or "").strip().splitlines()[0]


class ProcessorConfig(ComponentConfig):
    """Config of a logits processor. Subclasses set ``kind: Literal["..."] = "..."`` and implement build().

    Example:
        >>> from typing import Literal
        >>> class Scale(ProcessorConfig):
        ...     kind: Literal["scale"] = "scale"
        ...     factor: float = 2.0
        ...     def build(self): ...
    """

    def build(self) -> Processor:
        raise NotImplementedError


class SelectorConfig(ComponentConfig):
    """Config of a selector, the last link of a chain."""

    def build(self) -> Selector:
        raise NotImplementedError


class SearchConfig(ComponentConfig):
    """Config of a search, which decides which sequences continue (see :mod:`decoders.searches`).

    Example:
        >>> from typing import Literal
        >>> class Twice(SearchConfig):
        ...     kind: Literal["twice"] = "twice"
        ...     def build(self): ...
    """

    def build(self) -> Search:
        raise NotImplementedError
