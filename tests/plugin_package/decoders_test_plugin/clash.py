"""A plugin that claims a kind the built-ins already provide."""

from typing import Literal

import decoders


class FakeTopKConfig(decoders.ProcessorConfig):
    """A second 'top_k' (test plugin)."""

    kind: Literal["top_k"] = "top_k"

    def build(self):
        raise AssertionError("never built: the built-in top_k keeps the kind")


@decoders.hookimpl
def decoders_register_processors(register):
    register(FakeTopKConfig)
