"""A working plugin: a processor that adds a constant to one token, and a selector that picks the lowest id."""

from typing import Literal

import torch
from pydantic import Field

import decoders


class Boost(decoders.Processor):
    kind = "test_boost"

    def __init__(self, token_id: int, amount: float):
        self.token_id = token_id
        self.amount = amount

    def process(self, input_ids, logits):
        out = logits.clone()
        out[:, self.token_id] += self.amount
        return out


class BoostConfig(decoders.ProcessorConfig):
    """Add `amount` to the logit of `token_id` (test plugin)."""

    kind: Literal["test_boost"] = "test_boost"
    token_id: int = Field(ge=0)
    amount: float = Field(gt=0)

    def build(self):
        return Boost(self.token_id, self.amount)


class LowestId(decoders.Selector):
    kind = "test_lowest"

    def select(self, logits, generators=None):
        return torch.isfinite(logits).int().argmax(dim=-1)


class LowestIdConfig(decoders.SelectorConfig):
    """Pick the surviving token with the lowest id (test plugin)."""

    kind: Literal["test_lowest"] = "test_lowest"

    def build(self):
        return LowestId()


@decoders.hookimpl
def decoders_register_processors(register):
    register(BoostConfig)


@decoders.hookimpl
def decoders_register_selectors(register):
    register(LowestIdConfig)


@decoders.hookimpl
def decoders_register_presets(register):
    register(
        "test_boosted",
        {"description": "always token 2 (test plugin)", "processors": [{"kind": "test_boost", "token_id": 2, "amount": 50.0}]},
    )


@decoders.hookimpl
def decoders_generation_config(fields):
    if "test_boost_token" not in fields:
        return None
    return ["test_boost_token"], [{"kind": "test_boost", "token_id": fields["test_boost_token"], "amount": 100.0}]
