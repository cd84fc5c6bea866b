"""A built strategy: an ordered list of processors followed by one selector.

The chain keeps scores dense (``[B, V]``) until a truncation can hand over a candidate set (``[B, k]``
values and token ids); from then on, processors that support candidate sets work on ``k`` columns instead
of ``V``, and the rest see a dense tensor rebuilt for them. Both paths give the same processed scores and,
from the same generators, the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from decoders.errors import NonFiniteLogitsError, StrategyError
from decoders.events import RowsRewound, RowsSelected, TokensAccepted
from decoders.processors.base import Candidates, DecodeContext, Processor
from decoders.processors.truncation import TopK
from decoders.scores import Scores, to_dense
from decoders.selectors import Selector

#: called as ``observer(index, processor, before, after)`` for each processor, when tracing
Observer = Callable[[int, Processor, Scores, Scores], None]


def _values(scores: Scores) -> torch.Tensor:
    return scores.values if isinstance(scores, Candidates) else scores


def check_scores(scores: Scores, where: str) -> None:
    """Raise :class:`NonFiniteLogitsError` if a row has NaN, +inf, or no finite value left.

    Costs one reduction over the scores (a ``[B, k]`` one for a candidate set) and one host synchronisation.
    """
    _check_row_max(_values(scores).amax(dim=-1), where)


def _check_row_max(row_max: torch.Tensor, where: str) -> None:
    """:func:`check_scores` given the scores' row maxima ``[B]``."""
    if bool(torch.isfinite(row_max).all()):
        return
    row = int((~torch.isfinite(row_max)).nonzero()[0])
    value = float(row_max[row])
    if value != value:
        problem = "contain NaN"
    elif value > 0:
        problem = "contain +inf"
    else:
        problem = "have every token removed (all -inf)"
    raise NonFiniteLogitsError(
        f"the logits {where} {problem} in batch row {row}. "
        "Check the model's dtype (float16 on CPU overflows), the inputs, and processors that remove or bias tokens."
    )


class Chain:
    """Processors in order, then a selector. Built by :meth:`decoders.Strategy.build`.

    Args:
        processors: processors, run in the order given (constraints, see :attr:`Processor.constraint`, first).
        selector: the selector that picks one token per row.
        use_candidates: allow the candidate-set fast path (the result is the same either way).

    Example:
        >>> from decoders.processors import Temperature, TopK
        >>> from decoders.selectors import Greedy
        >>> chain = Chain([Temperature(0.7), TopK(2)], Greedy())
        >>> chain.select(torch.zeros(1, 0, dtype=torch.long), torch.tensor([[0.0, 3.0, 1.0]]))
        tensor([1])
    """

    def __init__(self, processors: Sequence[Processor], selector: Selector, *, use_candidates: bool = True):
        # constraints first, in their order, then the rest in theirs (see Processor.constraint)
        self.processors = [p for p in processors if p.constraint] + [p for p in processors if not p.constraint]
        self.selector = selector
        self.use_candidates = use_candidates
        self.context = DecodeContext()

    def reset(self, context: DecodeContext | None = None) -> None:
        """Start a new generation: pass the context to every processor (stateful ones clear their state)."""
        self.context = context or DecodeContext()
        for processor in self.processors:
            processor.reset(self.context)

    def update(self, event) -> None:
        """Follow a change of the batch's rows (an event of :mod:`decoders.events`): the context's per-row fields,
        then every processor's state."""
        self.context.follow(event)
        for processor in self.processors:
            processor.update(event)

    def set_padding(self, padding: Sequence[int], prompt_lengths: Sequence[int] | None = None) -> None:
        """The left padding (and prompt lengths) of the ``input_ids`` the next runs get, per row: for a search that
        gives the chain its rows' histories aligned otherwise than the session's columns (speculative decoding)."""
        self.context.padding = list(padding)
        if prompt_lengths is not None:
            self.context.prompt_lengths = list(prompt_lengths)

    def accept(self, tokens: torch.LongTensor) -> None:
        """Tell every processor which tokens ``[B]`` were just selected."""
        self.update(TokensAccepted(tokens))

    def reorder(self, rows: torch.LongTensor) -> None:
        """Row i of the next step continues old row ``rows[i]``: update the context and every processor."""
        self.update(RowsSelected(torch.as_tensor(rows, dtype=torch.long), ()))

    def rollback(self, counts: Sequence[int]) -> None:
        """Every processor forgets the last ``counts[i]`` tokens row ``i`` accepted (speculative decoding)."""
        counts = tuple(int(c) for c in counts)
        if any(counts):
            self.update(RowsRewound(counts))

    def require(self, methods: Sequence[str], search: str) -> None:
        """Refuse, with a clear message, a stateful processor that lacks a state method ``search`` will call."""
        for index, processor in enumerate(self.processors):
            missing = [method for method in methods if not processor.supports(method)]
            if missing:
                calls = " and ".join(f"{m}(...)" for m in missing)
                raise StrategyError(
                    f"{self._name(index)} keeps state per row but does not implement {calls}, which the "
                    f"'{search}' search calls to follow its hypotheses; use the 'single' search, or add {calls} to "
                    f"{type(processor).__name__}"
                )

    def _name(self, index: int) -> str:
        if index < len(self.processors):
            return f"processor #{index + 1} '{self.processors[index].kind}'"
        return f"selector '{self.selector.kind}'"

    def _run(
        self, input_ids: torch.LongTensor, logits: torch.Tensor, observer: Observer | None,
        maxima: list[tuple[str, torch.Tensor]],
    ) -> Scores:
        """:meth:`run`'s loop; appends each stage's row maxima to ``maxima`` (checked at once) unless observed."""
        scores: Scores = logits
        index = 0
        while index < len(self.processors):
            processor = self.processors[index]
            before = scores
            if observer is None and (fused := self._fused(index, input_ids, scores)) is not None:
                scores = fused  # this processor and the next, in one step
                index += 1
            elif isinstance(scores, Candidates):
                if processor.supports_candidates:
                    scores = processor.process_candidates(input_ids, scores)
                else:
                    scores = processor.process(input_ids, scores.to_dense())
            else:
                fast = processor.to_candidates(input_ids, scores) if self.use_candidates else None
                scores = fast if fast is not None else processor.process(input_ids, scores)
            if observer is not None:
                self._check_stages(logits, [(f"returned by {self._name(index)}", _values(scores).amax(dim=-1))])
                observer(index, processor, before, scores)
            else:
                maxima.append((f"returned by {self._name(index)}", _values(scores).amax(dim=-1)))
            index += 1
        return scores

    def run(self, input_ids: torch.LongTensor, logits: torch.Tensor, observer: Observer | None = None) -> Scores:
        """Run the processors; the result is dense or a candidate set. ``observer`` sees every stage.

        Each stage's row maxima are checked once, after the last processor (one host synchronisation per step,
        not one per processor; with an observer, after every stage). A stage with NaN, +inf or a row without any
        finite value raises :class:`NonFiniteLogitsError` naming the first such stage, or the input when it was
        already bad; also when a later processor failed on those scores.
        """
        if not self.processors:
            check_scores(logits, f"given to {self._name(0)}")
        maxima: list[tuple[str, torch.Tensor]] = []
        try:
            scores = self._run(input_ids, logits, observer, maxima)
        except NonFiniteLogitsError:
            raise
        except Exception:
            self._check_stages(logits, maxima)  # scores gone bad explain the failure better than what it caused
            raise
        self._check_stages(logits, maxima)
        return scores

    def _check_stages(self, logits: torch.Tensor, maxima: list[tuple[str, torch.Tensor]]) -> None:
        """Raise for the first stage whose row maxima are not all finite (blaming a bad input instead)."""
        if not maxima or bool(torch.isfinite(torch.stack([row_max for _, row_max in maxima])).all()):
            return
        for where, row_max in maxima:
            if not bool(torch.isfinite(row_max).all()):
                check_scores(logits, f"given to {self._name(0)}")  # blame the input when it was already bad
                _check_row_max(row_max, where)

    def _fused(self, index: int, input_ids: torch.LongTensor, scores: Scores) -> Candidates | None:
        """An elementwise monotone processor (temperature) followed by top-k, run as top-k on the raw logits.

        Top-k picks the same tokens before and after an order-preserving map, so only the ``k`` candidates
        need mapping: one read of the logits instead of a full-vocabulary write. None when not applicable.
        """
        if not (self.use_candidates and index + 1 < len(self.processors) and isinstance(scores, torch.Tensor)):
            return None
        first, second = self.processors[index], self.processors[index + 1]
        if not (first.elementwise_monotone and isinstance(second, TopK)):
            return None
        return second.to_candidates(input_ids, scores, transform=lambda values: first.process(input_ids, values))

    def process(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> torch.Tensor:
        """Processed scores, dense ``[B, V]`` (``-inf`` for removed tokens)."""
        return to_dense(self.run(input_ids, logits))

    def choose(self, scores: Scores, generators: list[torch.Generator] | None = None) -> torch.LongTensor:
        """Run the selector on processed scores (dense or candidate set)."""
        if isinstance(scores, Candidates):
            return self.selector.select_candidates(scores, generators)
        return self.selector.select(scores, generators)

    def select(
        self, input_ids: torch.LongTensor, logits: torch.Tensor, generators: list[torch.Generator] | None = None
    ) -> torch.LongTensor:
        """Process ``logits`` and pick one token per row: ids ``[B]``."""
        return self.choose(self.run(input_ids, logits), generators)

    def __repr__(self) -> str:
        steps = " → ".join([repr(p) for p in self.processors] + [repr(self.selector)])
        return f"Chain({steps})"
