"""Searches: the third pluggable kind, deciding which sequences continue (see :mod:`decoders.searches.base`)."""

from decoders.searches.base import LogprobBuffer, Outcome, Search, SearchJob, SearchRun, processed_log_probs
from decoders.searches.beam import BeamConfig, BeamSearch
from decoders.searches.single import SingleConfig, SingleSearch

__all__ = [
    "BeamConfig",
    "BeamSearch",
    "LogprobBuffer",
    "Outcome",
    "Search",
    "SearchJob",
    "SearchRun",
    "SingleConfig",
    "SingleSearch",
    "processed_log_probs",
]
