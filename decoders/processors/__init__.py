"""Built-in logits processors (tensor level). Configs that build them live in :mod:`decoders.builtins`."""

from decoders.processors.base import Candidates, DecodeContext, Processor
from decoders.processors.constraints import BadWords, LogitBias, MinNewTokens
from decoders.processors.penalties import NoRepeatNGram, PresenceFrequency, RepetitionPenalty
from decoders.processors.truncation import (
    EpsilonCutoff,
    EtaCutoff,
    MinP,
    Temperature,
    TopK,
    TopNSigma,
    TopP,
    TypicalP,
    ValueProcessor,
)

__all__ = [
    "BadWords",
    "Candidates",
    "DecodeContext",
    "EpsilonCutoff",
    "EtaCutoff",
    "LogitBias",
    "MinNewTokens",
    "MinP",
    "NoRepeatNGram",
    "PresenceFrequency",
    "Processor",
    "RepetitionPenalty",
    "Temperature",
    "TopK",
    "TopNSigma",
    "TopP",
    "TypicalP",
    "ValueProcessor",
]
