"""The events by which a batch's rows change; every follower of a batch (model session, chain, processors,
buffers) keeps its per-row state by them and nothing else.

They are the per-row counterpart of vLLM's ``BatchUpdate(added, removed, moved)``: rows join at the end
(:class:`RowsAdded`), any reordering, fork or drop is one :class:`RowsSelected` saying which old row each row
continues, and the token-level changes are :class:`TokensAccepted` and :class:`RowsRewound`. A stateful
processor implements ``update(event)`` (see :class:`~decoders.processors.base.Processor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class RowsAdded:
    """New rows joined at the end of the batch (their prompts not yet run by the model).

    Args:
        rows: the new rows (:class:`~decoders.batch.Row`), in batch order; they take the places
            ``start … start + len(rows) - 1``.
        start: the batch size before they joined.
        padding: each new row's left padding in the batch's columns (empty when the batch has no columns, as in
            vLLM, where every row's tokens are its own).
    """

    rows: tuple[Any, ...]
    start: int
    padding: tuple[int, ...] = ()


@dataclass(frozen=True)
class RowsSelected:
    """Row ``i`` of the batch now continues old row ``indices[i]``: rows may repeat (forks) or go away (drops).

    Args:
        indices: ``[R']`` long tensor of old batch rows.
        rows: the :class:`~decoders.batch.Row` of each new batch row (a fork may give its copies rows of their own).
    """

    indices: torch.LongTensor
    rows: tuple[Any, ...]


@dataclass(frozen=True)
class TokensAccepted:
    """Each row was given one token (``[R]``); rows that are not live got the padding id and should ignore it."""

    tokens: torch.LongTensor


@dataclass(frozen=True)
class RowsRewound:
    """Row ``i`` forgets the last ``counts[i]`` tokens it accepted (speculative decoding's rejected drafts)."""

    counts: tuple[int, ...]


@dataclass(frozen=True)
class RowsFinished:
    """Batch rows ``rows`` ended; they stay in the batch (not live) until a :class:`RowsSelected` drops them.

    Args:
        rows: the batch rows that ended.
        size: the batch's number of rows.
    """

    rows: tuple[int, ...]
    size: int


@dataclass(frozen=True)
class RowsWidened:
    """Every row got ``columns`` more columns of left padding (a joining prompt was longer than the batch); a
    negative count takes columns of padding away."""

    columns: int


RowEvent = RowsAdded | RowsSelected | TokensAccepted | RowsRewound | RowsFinished | RowsWidened


