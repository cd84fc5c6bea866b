"""A plugin whose hook name is misspelled: decoders reports it instead of silently never calling it."""

from typing import Literal

import decoders


class UnseenConfig(decoders.ProcessorConfig):
    """Never registered (test plugin)."""

    kind: Literal["test_unseen"] = "test_unseen"

    def build(self):
        raise AssertionError("never built")


@decoders.hookimpl
def decoders_register_processor(register):  # missing the final "s"
    register(UnseenConfig)
