"""Configs of the built-in processors, selectors and searches, registered through the same hooks as plugins."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, NonNegativeInt, field_validator

from decoders import processors as p
from decoders import selectors as s
from decoders.config import ProcessorConfig, SelectorConfig
from decoders.hookspecs import hookimpl
from decoders.searches import (
    BeamConfig,
    BestOfConfig,
    ContrastiveConfig,
    DolaConfig,
    SingleConfig,
    SpeculativeConfig,
    StochasticBeamConfig,
)

MinTokensToKeep = Annotated[int, Field(ge=1, description="always keep at least this many of the most likely tokens")]


def _not_off(field: str, off_values: tuple[float, ...], advice: str = ""):
    """A "before" validator: a value other libraries use to mean "off" gets advice instead of a bare range error.

    (Here 0 or -1 never means off: a processor is off when it is left out of the chain.)
    """

    def check(cls, value):
        if not isinstance(value, bool) and isinstance(value, int | float) and value in off_values:
            raise ValueError(
                advice or f"{field} {value} does not turn this processor off: leave the processor out instead"
            )
        return value

    return field_validator(field, mode="before")(classmethod(check))


class TemperatureConfig(ProcessorConfig):
    """Divide logits by a temperature (< 1 sharper, > 1 flatter)."""

    kind: Literal["temperature"] = "temperature"
    temperature: float = Field(gt=0, description="> 0; for temperature 0 use the greedy selector")

    _greedy = _not_off("temperature", (0,), "temperature 0 means greedy decoding: use the greedy selector instead")

    def build(self):
        return p.Temperature(self.temperature)


class TopKConfig(ProcessorConfig):
    """Keep the k most likely tokens (ties with the k-th survive)."""

    kind: Literal["top_k"] = "top_k"
    top_k: int = Field(ge=1)
    min_tokens_to_keep: MinTokensToKeep = 1

    _off = _not_off("top_k", (0, -1))

    def build(self):
        return p.TopK(self.top_k, self.min_tokens_to_keep)


class TopPConfig(ProcessorConfig):
    """Nucleus: keep the smallest set of likely tokens with mass ≥ top_p."""

    kind: Literal["top_p"] = "top_p"
    top_p: float = Field(gt=0, le=1)
    min_tokens_to_keep: MinTokensToKeep = 1

    def build(self):
        return p.TopP(self.top_p, self.min_tokens_to_keep)


class MinPConfig(ProcessorConfig):
    """Keep tokens with probability ≥ min_p × the top probability."""

    kind: Literal["min_p"] = "min_p"
    min_p: float = Field(ge=0, le=1)
    min_tokens_to_keep: MinTokensToKeep = 1

    def build(self):
        return p.MinP(self.min_p, self.min_tokens_to_keep)


class TypicalPConfig(ProcessorConfig):
    """Locally typical sampling: keep the most typical tokens up to typical_p mass."""

    kind: Literal["typical_p"] = "typical_p"
    typical_p: float = Field(gt=0, le=1)
    min_tokens_to_keep: MinTokensToKeep = 1

    def build(self):
        return p.TypicalP(self.typical_p, self.min_tokens_to_keep)


class EpsilonCutoffConfig(ProcessorConfig):
    """Remove tokens with probability below epsilon_cutoff."""

    kind: Literal["epsilon_cutoff"] = "epsilon_cutoff"
    epsilon_cutoff: float = Field(gt=0, lt=1)
    min_tokens_to_keep: MinTokensToKeep = 1

    _off = _not_off("epsilon_cutoff", (0,))

    def build(self):
        return p.EpsilonCutoff(self.epsilon_cutoff, self.min_tokens_to_keep)


class EtaCutoffConfig(ProcessorConfig):
    """Remove tokens below min(η, √η·exp(−entropy))."""

    kind: Literal["eta_cutoff"] = "eta_cutoff"
    eta_cutoff: float = Field(gt=0, lt=1)
    min_tokens_to_keep: MinTokensToKeep = 1

    _off = _not_off("eta_cutoff", (0,))

    def build(self):
        return p.EtaCutoff(self.eta_cutoff, self.min_tokens_to_keep)


class TopNSigmaConfig(ProcessorConfig):
    """Keep logits within n standard deviations of the maximum."""

    kind: Literal["top_n_sigma"] = "top_n_sigma"
    top_n_sigma: float = Field(gt=0)

    _off = _not_off("top_n_sigma", (0, -1))

    def build(self):
        return p.TopNSigma(self.top_n_sigma)


class RepetitionPenaltyConfig(ProcessorConfig):
    """Penalise tokens already in the sequence (prompt included)."""

    kind: Literal["repetition_penalty"] = "repetition_penalty"
    repetition_penalty: float = Field(gt=0, description="> 1 discourages repetition")

    def build(self):
        return p.RepetitionPenalty(self.repetition_penalty)


class PresenceFrequencyConfig(ProcessorConfig):
    """Subtract presence and per-occurrence frequency penalties (generated tokens)."""

    kind: Literal["presence_frequency"] = "presence_frequency"
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int | None = Field(default=None, ge=1, description="count only the last n generated tokens")

    _off = _not_off(
        "penalty_last_n", (0, -1), "penalty_last_n must be ≥ 1; leave it out (None) to count every generated token"
    )

    def build(self):
        return p.PresenceFrequency(self.presence_penalty, self.frequency_penalty, self.penalty_last_n)


class NoRepeatNGramConfig(ProcessorConfig):
    """Forbid tokens that would repeat an n-gram."""

    kind: Literal["no_repeat_ngram"] = "no_repeat_ngram"
    no_repeat_ngram_size: int = Field(ge=1)

    _off = _not_off("no_repeat_ngram_size", (0,))

    def build(self):
        return p.NoRepeatNGram(self.no_repeat_ngram_size)


class MinNewTokensConfig(ProcessorConfig):
    """Forbid end-of-sequence until min_new_tokens were generated."""

    kind: Literal["min_new_tokens"] = "min_new_tokens"
    min_new_tokens: int = Field(ge=0)
    eos_token_id: NonNegativeInt | Annotated[list[NonNegativeInt], Field(min_length=1)] | None = Field(
        default=None, description="default: the model's"
    )

    def build(self):
        return p.MinNewTokens(self.min_new_tokens, self.eos_token_id)


class LogitBiasConfig(ProcessorConfig):
    """Add a bias to chosen token ids (-inf bans a token)."""

    model_config = ProcessorConfig.model_config | {"allow_inf_nan": True}

    kind: Literal["logit_bias"] = "logit_bias"
    logit_bias: dict[NonNegativeInt, float] = Field(min_length=1)

    @field_validator("logit_bias")
    @classmethod
    def _no_nan_or_positive_inf(cls, value: dict[int, float]) -> dict[int, float]:
        for token, bias in value.items():
            if math.isnan(bias) or bias == math.inf:
                raise ValueError(f"bias of token {token} is {bias}; use a finite number, or -inf to ban the token")
        return value

    def build(self):
        return p.LogitBias(self.logit_bias)


class BadWordsConfig(ProcessorConfig):
    """Forbid token sequences (lists of token ids)."""

    kind: Literal["bad_words"] = "bad_words"
    bad_words_ids: list[Annotated[list[NonNegativeInt], Field(min_length=1)]] = Field(min_length=1)

    def build(self):
        return p.BadWords(self.bad_words_ids)


class GreedyConfig(SelectorConfig):
    """Pick the most likely token (argmax)."""

    kind: Literal["greedy"] = "greedy"

    def build(self):
        return s.Greedy()


class SampleConfig(SelectorConfig):
    """Draw from the processed distribution with the row's seeded generator."""

    kind: Literal["sample"] = "sample"

    def build(self):
        return s.Sample()


PROCESSOR_CONFIGS = (
    TemperatureConfig,
    TopKConfig,
    TopPConfig,
    MinPConfig,
    TypicalPConfig,
    EpsilonCutoffConfig,
    EtaCutoffConfig,
    TopNSigmaConfig,
    RepetitionPenaltyConfig,
    PresenceFrequencyConfig,
    NoRepeatNGramConfig,
    MinNewTokensConfig,
    LogitBiasConfig,
    BadWordsConfig,
)
SELECTOR_CONFIGS = (GreedyConfig, SampleConfig)
SEARCH_CONFIGS = (
    SingleConfig, BeamConfig, ContrastiveConfig, StochasticBeamConfig, BestOfConfig, SpeculativeConfig, DolaConfig
)

#: the built-in presets: named strategies, each with its one-line description
PRESETS: dict[str, dict] = {
    "greedy": {"description": "always the most likely token", "selector": {"kind": "greedy"}},
    "low_temperature": {
        "description": "sampling at temperature 0.3 (focused)",
        "processors": [{"kind": "temperature", "temperature": 0.3}],
        "selector": {"kind": "sample"},
    },
    "high_temperature": {
        "description": "sampling at temperature 1.5 (adventurous)",
        "processors": [{"kind": "temperature", "temperature": 1.5}],
        "selector": {"kind": "sample"},
    },
    "top_k": {
        "description": "sampling from the 5 most likely tokens",
        "processors": [{"kind": "top_k", "top_k": 5}],
        "selector": {"kind": "sample"},
    },
    "top_p": {
        "description": "nucleus sampling, p = 0.9",
        "processors": [{"kind": "top_p", "top_p": 0.9}],
        "selector": {"kind": "sample"},
    },
    "balanced": {
        "description": "temperature 0.7, top-k 50, top-p 0.9",
        "processors": [
            {"kind": "temperature", "temperature": 0.7},
            {"kind": "top_k", "top_k": 50},
            {"kind": "top_p", "top_p": 0.9},
        ],
        "selector": {"kind": "sample"},
    },
    "pure_sampling": {"description": "sampling from the model's full distribution", "selector": {"kind": "sample"}},
    "min_p": {"description": "min-p 0.1", "processors": [{"kind": "min_p", "min_p": 0.1}], "selector": {"kind": "sample"}},
    # llama.cpp's default sampler chain (penalties, top-k 40, typical 1 (off), top-p 0.95, min-p 0.05, temp 0.8)
    "llama_cpp": {
        "description": "llama.cpp's default order: top-k 40, top-p 0.95, min-p 0.05, temperature 0.8",
        "processors": [
            {"kind": "top_k", "top_k": 40},
            {"kind": "top_p", "top_p": 0.95},
            {"kind": "min_p", "min_p": 0.05},
            {"kind": "temperature", "temperature": 0.8},
        ],
        "selector": {"kind": "sample"},
    },
    "beam_search": {
        "description": "beam search with 4 beams: the most likely whole sequence it finds",
        "search": {"kind": "beam", "num_beams": 4},
    },
    "contrastive": {
        "description": "contrastive search, penalty_alpha 0.6, top_k 4: likely tokens that do not repeat the text",
        "search": {"kind": "contrastive", "penalty_alpha": 0.6, "top_k": 4},
    },
    "stochastic_beam": {
        "description": "4 sequences sampled without replacement; the first one drawn is the result",
        "selector": {"kind": "sample"},
        "search": {"kind": "stochastic_beam", "num_beams": 4},
    },
}


@hookimpl
def decoders_register_processors(register):
    for config in PROCESSOR_CONFIGS:
        register(config)


@hookimpl
def decoders_register_selectors(register):
    for config in SELECTOR_CONFIGS:
        register(config)


@hookimpl
def decoders_register_searches(register):
    for config in SEARCH_CONFIGS:
        register(config)


@hookimpl
def decoders_register_presets(register):
    for name, strategy in PRESETS.items():
        register(name, strategy)
