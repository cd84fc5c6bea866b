"""decoders: a pluggable decoding-strategy framework for causal language models.

    text → tokenizer → ids → model (KV cache) → logits → processors → selector → next token → repeat

Compose a :class:`Strategy` (in code, from a preset, or from a JSON/TOML file), build it into a
:class:`Chain`, and run it over logits — or let :func:`generate` drive a model with it.
"""

from decoders.builtins import (
    BadWordsConfig,
    EpsilonCutoffConfig,
    EtaCutoffConfig,
    GreedyConfig,
    LogitBiasConfig,
    MinNewTokensConfig,
    MinPConfig,
    NoRepeatNGramConfig,
    PresenceFrequencyConfig,
    RepetitionPenaltyConfig,
    SampleConfig,
    TemperatureConfig,
    TopKConfig,
    TopNSigmaConfig,
    TopPConfig,
    TypicalPConfig,
)
from decoders.chain import Chain
from decoders.config import ProcessorConfig, SelectorConfig
from decoders.driver import GenerationResult, Generations, StepEvent, generate, stream
from decoders.errors import DecodersError, GenerationError, ModelLoadError, NonFiniteLogitsError, PluginError
from decoders.hookspecs import hookimpl
from decoders.plugins import get_registry, register_plugin, reload_registry, unregister_plugin
from decoders.processors import Candidates, DecodeContext, Processor, ValueProcessor
from decoders.selectors import Selector, row_uniforms
from decoders.strategy import PRESETS, Strategy, StrategyError
from decoders.trace import StageRecord, StepRecord, TokenProb


def load_model(name=None, **kwargs):
    """Load a causal LM and its tokenizer: see :func:`decoders.models.load_model` (imported on first use)."""
    from decoders.models import load_model as load

    return load(name, **kwargs)


__all__ = [
    "PRESETS",
    "BadWordsConfig",
    "Candidates",
    "Chain",
    "DecodeContext",
    "DecodersError",
    "EpsilonCutoffConfig",
    "EtaCutoffConfig",
    "GenerationError",
    "GenerationResult",
    "Generations",
    "GreedyConfig",
    "LogitBiasConfig",
    "MinNewTokensConfig",
    "MinPConfig",
    "ModelLoadError",
    "NoRepeatNGramConfig",
    "NonFiniteLogitsError",
    "PluginError",
    "PresenceFrequencyConfig",
    "Processor",
    "ProcessorConfig",
    "RepetitionPenaltyConfig",
    "SampleConfig",
    "Selector",
    "SelectorConfig",
    "StageRecord",
    "StepEvent",
    "StepRecord",
    "Strategy",
    "StrategyError",
    "TemperatureConfig",
    "TokenProb",
    "TopKConfig",
    "TopNSigmaConfig",
    "TopPConfig",
    "TypicalPConfig",
    "ValueProcessor",
    "generate",
    "get_registry",
    "hookimpl",
    "load_model",
    "register_plugin",
    "reload_registry",
    "row_uniforms",
    "stream",
    "unregister_plugin",
]
