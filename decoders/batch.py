"""The rows of a running search: one owner of every per-row fact, and the only way rows change.

    Batch.add / select / drop / accept / rewind / finish / widen
      → one event each (RowsAdded, RowsSelected, TokensAccepted, RowsRewound, RowsFinished, RowsWidened)
      → delivered to the followers: the model session (KV cache), the chain (its context and every stateful
        processor, through ``Processor.update``), log-prob buffers, the row tracker

A search asks the batch for every change of rows (a beam forks, a finished row leaves, a request joins) and
never re-indexes a cache, a chain or a buffer itself. The events are those vLLM's logits processors follow
(``BatchUpdate(added, removed, moved)``), in a form that also says which row each new row continues, so a
processor written against them runs in decoders' engine and, through the adapter plugin, inside vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from decoders.events import RowEvent, RowsAdded, RowsFinished, RowsRewound, RowsSelected, RowsWidened, TokensAccepted
from decoders.results import FinishReason
from decoders.text import RowText

__all__ = [
    "Batch", "Follower", "Row", "RowEvent", "RowsAdded", "RowsFinished", "RowsRewound", "RowsSelected", "RowsWidened",
    "TokensAccepted", "row_end",
]  # fmt: skip


@dataclass(eq=False)
class Row:
    """One sequence of a search: its prompt, generator and, for one-token-per-row searches, its progress.

    Rows are identified by object, never by their place in the batch (which changes as rows leave and join).

    Args:
        origin: the row's index among the rows its search has been given, in the order they came (the prompt's
            index in a ``generate`` call); results and step events report rows by it.
        prompt_ids: the prompt's token ids (no padding).
        generator: the row's own random generator (None: torch's global one).
        strategy: what builds this row's chain (a :class:`~decoders.strategy.Strategy`); rows with equal
            ``group`` keys share one chain.
        group: the key of the row's strategy group (rows of one strategy share one chain).
        request: the engine's request this row serves (None outside an engine).
        max_new_tokens: the most tokens this row may generate.
        eos_token_ids: the ids that end this row (empty to ignore EOS).
        stops: the row's stop strings.
        logprobs: top alternatives per token to record (None: off).
        trace: whether to record the row's step records; ``top`` candidates per stage.
    """

    origin: int
    prompt_ids: list[int]
    generator: torch.Generator | None = None
    strategy: Any = None
    group: str = ""
    request: Any = None
    max_new_tokens: int = 64
    eos_token_ids: frozenset[int] = frozenset()
    stops: Sequence[str] = ()
    logprobs: int | None = None
    trace: bool = False
    top: int = 10
    #: the generated tokens (one-token-per-row searches keep them here)
    tokens: list[int] = field(default_factory=list)
    #: incremental text, when streaming or stop strings need it
    text: RowText | None = None
    finished: bool = False
    reason: FinishReason | None = None
    #: the row's step records, when traced
    records: list = field(default_factory=list)

    def end_reason(self, token: int) -> FinishReason | None:
        """Whether the row ends with ``token``, just appended (to :attr:`tokens` and :attr:`text`): the row-end rule."""
        return row_end(token, self.eos_token_ids, self.text, len(self.tokens), self.max_new_tokens)


def row_end(
    token: int, eos_token_ids: frozenset[int], text: RowText | None, length: int, max_new_tokens: int
) -> FinishReason | None:
    """The one row-end rule: ``"eos"`` for an end-of-sequence token, ``"stop"`` once the text holds a stop string,
    ``"length"`` at ``max_new_tokens`` generated tokens; None while the row goes on.

    Example:
        >>> row_end(2, frozenset({2}), None, 5, 64), row_end(7, frozenset({2}), None, 64, 64), row_end(7, frozenset(), None, 5, 64)
        ('eos', 'length', None)
    """
    if token in eos_token_ids:
        return "eos"
    if text is not None and text.stop_at is not None:
        return "stop"
    if length >= max_new_tokens:
        return "length"
    return None


class Follower(Protocol):
    """Anything that keeps per-row state and follows the batch's events."""

    def update(self, event: RowEvent) -> None: ...


class Batch:
    """The rows of one search run, in batch order, and the followers that every change of rows reaches.

    Args:
        rows: the starting rows (their prompts are already in the session).
        session: the model session the rows live in (it follows first, and gives joining rows their padding).
        followers: who else follows each event, in order (the chain, then buffers and trackers).

    Example:
        >>> batch = Batch([Row(0, [5, 6]), Row(1, [7])])
        >>> batch.select([1, 1]); [row.origin for row in batch.rows]
        [1, 1]
    """

    def __init__(self, rows: Sequence[Row], session: Any = None, followers: Sequence[Follower] = ()):
        self.rows: list[Row] = list(rows)
        self.session = session
        self.followers: list[Follower] = ([session] if session is not None else []) + list(followers)

    def __len__(self) -> int:
        return len(self.rows)

    def follow(self, follower: Follower) -> None:
        """Add a follower (it sees the events from now on)."""
        self.followers.append(follower)

    def _emit(self, event: RowEvent) -> None:
        for follower in self.followers:
            follower.update(event)

    # ---- the changes --------------------------------------------------------------------------------------------

    def add(self, rows: Sequence[Row]) -> None:
        """New rows join at the end of the batch (the batch widens first when a prompt is longer than its rows)."""
        padding: tuple[int, ...] = ()
        if self.session is not None:
            width = max(len(row.prompt_ids) for row in rows)
            if not self.rows or width > self.session.length:  # an empty batch starts at the new rows' width
                self.widen(width - self.session.length)
            padding = tuple(self.session.length - len(row.prompt_ids) for row in rows)
        event = RowsAdded(tuple(rows), len(self.rows), padding)
        self.rows.extend(rows)
        self._emit(event)

    def select(self, indices: torch.LongTensor | Sequence[int], rows: Sequence[Row] | None = None) -> None:
        """Row ``i`` continues old row ``indices[i]`` (forks repeat a row, drops leave it out). ``rows`` gives the
        new rows' :class:`Row` objects when forks become rows of their own (default: the old rows')."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        order = indices.tolist()
        new_rows = tuple(rows) if rows is not None else tuple(self.rows[i] for i in order)
        if rows is None and order == list(range(len(self.rows))):
            return
        self.rows = list(new_rows)
        self._emit(RowsSelected(indices, new_rows))

    def drop_finished(self) -> torch.LongTensor | None:
        """Finished rows leave the batch; returns the batch rows kept (None when none left or nothing changed)."""
        keep = [index for index, row in enumerate(self.rows) if not row.finished]
        if len(keep) == len(self.rows):
            return None
        kept = torch.tensor(keep, dtype=torch.long)
        self.select(kept)
        return kept

    def append(self, tokens: torch.LongTensor) -> None:
        """Every row is given one token ``[R]``: written after its last column (the model sees it at the next
        forward) and accepted by its processors."""
        self.session.append(tokens)
        self.accept(tokens)

    def accept(self, tokens: torch.LongTensor) -> None:
        """Every row was given one token ``[R]`` (its processors' state follows; the session is not changed)."""
        self._emit(TokensAccepted(tokens))

    def rewind(self, counts: Sequence[int]) -> None:
        """Row ``i`` forgets the last ``counts[i]`` tokens it accepted."""
        counts = tuple(int(c) for c in counts)
        if any(counts):
            self._emit(RowsRewound(counts))

    def finish(self, indices: Sequence[int], reasons: Sequence[FinishReason]) -> None:
        """Batch rows ``indices`` end, for ``reasons``; they stay (not live) until :meth:`drop_finished`."""
        for index, reason in zip(indices, reasons):
            self.rows[index].finished, self.rows[index].reason = True, reason
        if indices:
            self._emit(RowsFinished(tuple(indices), len(self.rows)))

    def widen(self, columns: int) -> None:
        """Every row gets ``columns`` more columns of left padding (negative: fewer)."""
        if columns:
            self._emit(RowsWidened(columns))
