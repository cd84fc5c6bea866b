"""Searches: the third pluggable kind, deciding which sequences continue (see :mod:`decoders.searches.base`)."""

from decoders.searches.base import LogprobBuffer, Outcome, RowTracker, Search, SearchJob, SearchRun, processed_log_probs
from decoders.searches.beam import BeamConfig, BeamSearch
from decoders.searches.best_of import BestOfConfig, BestOfSearch
from decoders.searches.contrastive import ContrastiveConfig, ContrastiveSearch
from decoders.searches.dola import DolaConfig, DolaSearch
from decoders.searches.single import SingleConfig, SingleSearch
from decoders.searches.speculative import SpeculativeConfig, SpeculativeSearch
from decoders.searches.stochastic_beam import StochasticBeamConfig, StochasticBeamSearch

__all__ = [
    "BeamConfig",
    "BeamSearch",
    "BestOfConfig",
    "BestOfSearch",
    "ContrastiveConfig",
    "ContrastiveSearch",
    "DolaConfig",
    "DolaSearch",
    "LogprobBuffer",
    "Outcome",
    "RowTracker",
    "Search",
    "SearchJob",
    "SearchRun",
    "SingleConfig",
    "SingleSearch",
    "SpeculativeConfig",
    "SpeculativeSearch",
    "StochasticBeamConfig",
    "StochasticBeamSearch",
    "processed_log_probs",
]
