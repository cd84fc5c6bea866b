"""decoders: a pluggable decoding-strategy framework for causal language models.

    text → tokenizer → ids → model (KV cache) → logits → processors → selector → next token → repeat
    (the search decides which sequences continue: one per prompt, beams, …)

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
from decoders.config import ProcessorConfig, SearchConfig, SelectorConfig
from decoders.driver import generate, stream
from decoders.engine import Engine, RequestEvent
from decoders.errors import (
    DecodersError,
    GenerationError,
    ModelLoadError,
    NonFiniteLogitsError,
    PluginError,
    StrategyError,
)
from decoders.hookspecs import hookimpl
from decoders.plugins import get_registry, register_plugin, reload_registry, unregister_plugin
from decoders.processors import Candidates, DecodeContext, Processor, ValueProcessor
from decoders.processors.base import NEG_INF, check_parameter, is_count, is_real
from decoders.results import GenerationResult, Generations, Hypothesis, StepEvent, StepLogprobs, TokenLogprob
from decoders.searches import BeamConfig, Outcome, Search, SearchJob, SingleConfig
from decoders.selectors import Selector, row_uniforms
from decoders.builtins import PRESETS
from decoders.strategy import Strategy
from decoders.trace import BeamRecord, BeamStepRecord, StageRecord, StepRecord, TokenProb


def cache_entries():
    """The model caches decoders keeps (see :func:`decoders.models.cache_entries`; imported on first use)."""
    from decoders.models import cache_entries as entries

    return entries()


def clear_cache():
    """Delete decoders' model caches and return their paths (see :func:`decoders.models.clear_cache`)."""
    from decoders.models import clear_cache as clear

    return clear()


def load_model(name=None, **kwargs):
    """Load a causal LM and its tokenizer: see :func:`decoders.models.load_model` (imported on first use)."""
    from decoders.models import load_model as load

    return load(name, **kwargs)


__all__ = [
    "NEG_INF",
    "PRESETS",
    "BadWordsConfig",
    "BeamConfig",
    "BeamRecord",
    "BeamStepRecord",
    "Candidates",
    "Chain",
    "DecodeContext",
    "DecodersError",
    "Engine",
    "EpsilonCutoffConfig",
    "EtaCutoffConfig",
    "GenerationError",
    "GenerationResult",
    "Generations",
    "GreedyConfig",
    "Hypothesis",
    "LogitBiasConfig",
    "MinNewTokensConfig",
    "MinPConfig",
    "ModelLoadError",
    "NoRepeatNGramConfig",
    "NonFiniteLogitsError",
    "Outcome",
    "PluginError",
    "PresenceFrequencyConfig",
    "Processor",
    "ProcessorConfig",
    "RepetitionPenaltyConfig",
    "RequestEvent",
    "SampleConfig",
    "Search",
    "SearchConfig",
    "SearchJob",
    "Selector",
    "SelectorConfig",
    "SingleConfig",
    "StageRecord",
    "StepEvent",
    "StepLogprobs",
    "StepRecord",
    "Strategy",
    "StrategyError",
    "TemperatureConfig",
    "TokenLogprob",
    "TokenProb",
    "TopKConfig",
    "TopNSigmaConfig",
    "TopPConfig",
    "TypicalPConfig",
    "ValueProcessor",
    "cache_entries",
    "check_parameter",
    "clear_cache",
    "generate",
    "get_registry",
    "hookimpl",
    "is_count",
    "is_real",
    "load_model",
    "register_plugin",
    "reload_registry",
    "row_uniforms",
    "stream",
    "unregister_plugin",
]
