"""The search contract: what a search is given (:class:`SearchJob`), what it returns, and shared helpers.

A search decides which sequences continue and which tokens they get; the chain decides the next-token
distribution of any one sequence. A search asks the chain for every distribution it uses, so any processor
chain composes with any search, plugin kinds included.

:meth:`Search.run` is a generator: it drives the :class:`~decoders.session.ModelSession`, yields a
:class:`~decoders.results.StepEvent` per step when it can stream (``streams = True``), and *returns* the
ranked :class:`~decoders.results.Hypothesis` list of every prompt, best first (an :class:`Outcome` each).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import torch

from decoders.chain import Chain, Scores
from decoders.errors import StrategyError
from decoders.mixed import MixedChain, MixedScores
from decoders.processors.base import Candidates, Component
from decoders.results import FinishReason, Hypothesis, StepEvent, StepLogprobs, TokenLogprob
from decoders.selectors import Selector
from decoders.session import ModelSession
from decoders.text import DECODE, RowText
from decoders.trace import BeamStepRecord, StepRecord, step_records


@dataclass
class Outcome:
    """What a search found for one prompt.

    Args:
        hypotheses: the ranked hypotheses, best first (at least one).
        steps: the single-hypothesis trace (one :class:`StepRecord` per token), when tracing.
        beam_steps: the beam trace (one :class:`BeamStepRecord` per step), when tracing.
    """

    hypotheses: list[Hypothesis]
    steps: list[StepRecord] | None = None
    beam_steps: list[BeamStepRecord] | None = None


#: what :meth:`Search.run` yields (step events) and returns (one outcome per prompt)
SearchRun = Generator[StepEvent, None, list[Outcome]]


@dataclass
class SearchJob:
    """Everything one generation gives its search. The chain has been reset for the session's rows.

    Args:
        session: the model session; its rows are the prompts, left-padded, not yet run.
        chain: the built chain (processors and selector).
        tokenizer: decodes token ids.
        max_new_tokens: at most this many new tokens per sequence (≥ 1).
        eos_token_ids: ids that end a sequence (empty with ``ignore_eos``).
        generators: one ``torch.Generator`` per prompt, or None (torch's global RNG).
        stops: stop strings (a sequence ends when its text contains one; the text is cut before it).
        texts: decode text at every step (streaming); otherwise only when stop strings need it.
        trace: record every step (see :class:`~decoders.trace.StepRecord`).
        top: candidates per stage in a trace.
        logprobs: per generated token, log-probabilities with this many top alternatives; None for off.
    """

    session: ModelSession
    chain: Chain
    tokenizer: Any
    max_new_tokens: int
    eos_token_ids: frozenset[int]
    generators: list[torch.Generator] | None
    stops: list[str] = field(default_factory=list)
    texts: bool = False
    trace: bool = False
    top: int = 10
    logprobs: int | None = None
    _token_texts: dict[int, str] = field(default_factory=dict, repr=False)

    def row_text(self) -> RowText:
        """A fresh incremental decoder for one sequence, with this job's stop strings."""
        return RowText(self.tokenizer, self.stops)

    def decode(self, ids: list[int]) -> str:
        """The text of generated ids, as every result reports it."""
        return self.tokenizer.decode(ids, **DECODE)

    def token_text(self, token_id: int) -> str:
        """The text of one token id (cached)."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id])
        return text


class Search(Component):
    """Base class of searches: ``run(job)`` yields step events and returns each prompt's ranked hypotheses.

    Class attributes say what the search needs, so that it fails when the strategy is built, not mid-run:
    ``requires`` lists the processor state methods it calls beside ``reset``/``accept`` (``"reorder"`` for
    searches that fork or drop rows), ``selector_methods`` the selector methods it calls beside ``select``
    (``"select_many"`` for beams), ``streams`` whether :func:`decoders.stream` can show its tokens as they
    are chosen, ``stop_strings`` whether it honours stop strings, ``samples`` whether it draws samples (the
    sample selector is its natural one: the CLI picks it when the user chose no strategy), and ``per_row_chains``
    whether it picks tokens only through ``chain.choose`` (then the rows of a mixed-strategy batch may differ in
    their selectors too; otherwise they must share one, which the search reads as ``chain.selector``).
    """

    requires: tuple[str, ...] = ()
    selector_methods: tuple[str, ...] = ()
    streams: bool = True
    stop_strings: bool = True
    samples: bool = False
    per_row_chains: bool = False

    def check(self, chain: Chain) -> None:
        """Raise :class:`StrategyError` if ``chain`` cannot be used with this search."""
        missing = [m for m in self.selector_methods if getattr(type(chain.selector), m) is getattr(Selector, m)]
        if missing:
            raise StrategyError(
                f"the '{self.kind}' search needs a selector with {' and '.join(m + '(...)' for m in missing)} "
                f"(greedy and sample have it), which '{chain.selector.kind}' does not implement"
            )
        chain.require(self.requires, self.kind)

    def run(self, job: SearchJob) -> SearchRun:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "kind")
        return f"{type(self).__name__}({params})"


def processed_log_probs(scores: Scores | MixedScores, token_ids: torch.LongTensor) -> torch.Tensor:
    """Log-probabilities ``[R, m]`` of ``token_ids [R, m]`` under softmax(scores) (``-inf`` where removed)."""
    if isinstance(scores, MixedScores):
        return scores.gather_rows(
            [processed_log_probs(part, token_ids[rows]) for part, rows in zip(scores.parts, scores.rows)]
        )
    if isinstance(scores, Candidates):
        values = scores.values.float()
        norm = torch.logsumexp(values, dim=-1, keepdim=True)
        hits = scores.ids.unsqueeze(1) == token_ids.unsqueeze(-1)  # [R, m, k]
        found = torch.where(hits, values.unsqueeze(1), float("-inf")).amax(dim=-1)
        return found - norm
    # log_softmax is one fused pass over the vocabulary; logsumexp is several (and slow when threads contend)
    return torch.log_softmax(scores.float(), dim=-1).gather(1, token_ids)


class LogprobBuffer:
    """Per row and step: the chosen token and ``n`` top alternatives, with raw and processed log-probabilities.

    Column 0 of each step is the chosen token; columns 1… are the ``n`` most likely tokens under the raw
    model. Rows follow the search through :meth:`select`.

    Args:
        rows: number of rows.
        steps: number of steps to hold.
        n: top alternatives per step.
        device: where the buffers live.
    """

    def __init__(self, rows: int, steps: int, n: int, device: torch.device):
        self.n = n
        self.ids = torch.zeros((rows, steps, 1 + n), dtype=torch.long, device=device)
        self.raw = torch.zeros((rows, steps, 1 + n), dtype=torch.float32, device=device)
        self.processed = torch.zeros((rows, steps, 1 + n), dtype=torch.float32, device=device)

    @staticmethod
    def measure(logits: torch.Tensor, scores: Scores, tokens: torch.LongTensor, n: int, *, normalised: bool = False):
        """``(ids, raw, processed)``, each ``[R, 1 + n]``: the chosen tokens and the top ``n`` raw alternatives.

        ``logits`` are the model's (``normalised``: already log-probabilities); only the ``1 + n`` entries per
        row are normalised, no full-vocabulary tensor is made.
        """
        top = torch.topk(logits, n, dim=-1).indices if n else tokens.new_zeros((tokens.shape[0], 0))
        ids = torch.cat([tokens.unsqueeze(-1), top], dim=-1)
        raw = logits.gather(1, ids) if normalised else torch.log_softmax(logits, dim=-1).gather(1, ids)
        return ids, raw, processed_log_probs(scores, ids)

    def write(self, step: int, ids: torch.Tensor, raw: torch.Tensor, processed: torch.Tensor) -> None:
        self.ids[:, step], self.raw[:, step], self.processed[:, step] = ids, raw, processed

    def select(self, rows: torch.LongTensor) -> None:
        self.ids, self.raw, self.processed = (t.index_select(0, rows) for t in (self.ids, self.raw, self.processed))

    def records(self, row: int, length: int, job: SearchJob) -> list[StepLogprobs]:
        """The first ``length`` steps of ``row`` as :class:`StepLogprobs`."""
        ids, raw, processed = (t[row, :length].tolist() for t in (self.ids, self.raw, self.processed))
        return [step_logprobs(i, r, p, job) for i, r, p in zip(ids, raw, processed)]


def step_logprobs(ids: list[int], raw: list[float], processed: list[float], job: SearchJob) -> StepLogprobs:
    """One step's :class:`StepLogprobs` from lists (chosen first, then the alternatives)."""
    tokens = [
        TokenLogprob(token_id=i, token=job.token_text(i), raw=r, processed=p if p > float("-inf") else None)
        for i, r, p in zip(ids, raw, processed)
    ]
    return StepLogprobs(chosen=tokens[0], top=tokens[1:])


def chain_step_records(
    job: SearchJob, step: int, scores: Scores | MixedScores, stages: list | None, tokens: torch.Tensor, rows: list[int]
) -> list[StepRecord]:
    """The trace records of batch rows ``rows`` for one chain run (``row`` is the batch row): from the observer's
    ``stages``, or, for a mixed batch, from each group's own stages (:attr:`MixedScores.stages`)."""
    if not isinstance(scores, MixedScores):
        return step_records(step, stages, tokens, job.tokenizer, rows=rows, top=job.top) if stages else []
    records = []
    wanted = set(rows)
    for group_rows, group_stages in zip(scores.rows, scores.stages or []):
        batch = group_rows.tolist()
        local = [i for i, row in enumerate(batch) if row in wanted]
        if local:
            group = step_records(step, group_stages, tokens[group_rows], job.tokenizer, rows=local, top=job.top)
            records += [r.model_copy(update={"row": batch[r.row]}) for r in group]
    return records


class RowTracker:
    """The bookkeeping of searches that give each row one token per step (single, contrastive, best-of).

    It follows every row's text (for streaming and stop strings), ends rows at EOS, a stop string or
    ``max_new_tokens``, sums each row's score (the log-probability of its tokens under the processed
    distribution), keeps traces and log-probabilities when asked, and makes the step events and outcomes.

    Finished rows leave the batch (:meth:`leave`: the session's KV cache, the chain and the tracker's buffers
    keep only the live rows) when every processor can follow a change of rows (``reorder``); otherwise they
    stay, given the padding id (:meth:`hold_finished`). Step events, outcomes, scores, log-probabilities and
    traces always report every original row, in the prompts' order.

    Args:
        job: the search's job.
        rows: the number of rows (one hypothesis each).

    Example:
        >>> tracker = RowTracker(job, session.rows)  # doctest: +SKIP
        >>> tokens = tracker.hold_finished(chain.choose(scores, tracker.generators))  # doctest: +SKIP
        >>> event = tracker.record(step, logits, scores, tokens)  # doctest: +SKIP
        >>> tracker.leave(session)  # doctest: +SKIP
    """

    def __init__(self, job: SearchJob, rows: int):
        self.job, self.rows = job, rows
        device = job.session.device
        #: the original row of each batch row (rows leave the batch as they finish)
        self.batch_rows = list(range(rows))
        #: the generators of the batch rows, in batch order
        self.generators = job.generators
        self.finished = [False] * rows
        self.finished_mask = torch.zeros(rows, dtype=torch.bool, device=device)  # per batch row
        self._held = False  # whether a finished row is still in the batch
        self.reasons: list[FinishReason] = ["length"] * rows
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.scores = torch.zeros(rows, dtype=torch.float64, device=device)  # per batch row
        self.final_scores: list[float | None] = [None] * rows
        self.final_logprobs: list[list[StepLogprobs] | None] = [None] * rows
        self.texts = [job.row_text() for _ in range(rows)] if job.texts or job.stops else None
        self.records: list[list[StepRecord]] | None = [[] for _ in range(rows)] if job.trace else None
        self.logprobs = (
            LogprobBuffer(rows, job.max_new_tokens, job.logprobs, device) if job.logprobs is not None else None
        )
        self.can_leave = _can_reorder(job.chain)

    @property
    def done(self) -> bool:
        return all(self.finished)

    def observer(self, logits: torch.Tensor) -> tuple[list | None, Any]:
        """``(stages, observer)`` for :meth:`Chain.run` when tracing (the model's logits first), else ``(None, None)``."""
        if self.records is None:
            return None, None
        stages = [("model", logits)]
        return stages, lambda index, processor, before, after: stages.append((processor.kind, after))

    def hold_finished(self, tokens: torch.LongTensor) -> torch.LongTensor:
        """``tokens`` with the padding id in the finished rows still in the batch (which the chain's context
        then marks as not live, for :meth:`Processor.accept`)."""
        if self._held:
            self.job.chain.context.live = ~self.finished_mask
            return tokens.masked_fill(self.finished_mask, self.job.session.pad_id)
        return tokens

    def record(
        self, step: int, logits: torch.Tensor, scores: Scores, tokens: torch.LongTensor, stages: list | None = None
    ) -> StepEvent:
        """Take step ``step``'s tokens (``[batch rows]``, chosen from ``scores``, made from the model's ``logits``)."""
        job, batch_rows = self.job, self.batch_rows
        if self.logprobs is not None:
            measured = LogprobBuffer.measure(logits, scores, tokens, self.logprobs.n)
            self.logprobs.write(step, *measured)
            chosen_log_probs = measured[2][:, 0]  # column 0 is the chosen token
        else:
            chosen_log_probs = processed_log_probs(scores, tokens.unsqueeze(-1)).squeeze(-1)
        chosen_log_probs = chosen_log_probs.double()
        self.scores += chosen_log_probs.masked_fill(self.finished_mask, 0.0) if self._held else chosen_log_probs
        active = [index for index, row in enumerate(batch_rows) if not self.finished[row]]
        step_trace: list[StepRecord | None] | None = None
        if self.records is not None:
            step_trace = [None] * self.rows
            for record in chain_step_records(job, step, scores, stages, tokens, active):
                record = record.model_copy(update={"row": batch_rows[record.row]})
                step_trace[record.row] = record
                self.records[record.row].append(record)
        token_ids: list[int | None] = [None] * self.rows
        new_texts = [""] * self.rows
        chosen = tokens.tolist()
        last_step = step == job.max_new_tokens - 1
        for index in active:
            row = batch_rows[index]
            token_ids[row] = token = chosen[index]
            self.tokens[row].append(token)
            text = self.texts[row] if self.texts else None
            if text is not None:
                text.push(token)
            reason: FinishReason | None = None
            if token in job.eos_token_ids:
                reason = "eos"
            elif text is not None and text.stop_at is not None:
                reason = "stop"
            elif last_step:
                reason = "length"
            if reason is not None:
                self.finished[row], self.finished_mask[index], self.reasons[row] = True, True, reason
                self._held = True  # until it leaves the batch
                if text is not None and reason != "stop":
                    text.flush()
            if text is not None:
                new_texts[row] = text.take(final=self.finished[row])
        return StepEvent(step, token_ids, new_texts, list(self.finished), step_trace)

    def leave(self, session: ModelSession) -> torch.LongTensor | None:
        """Drop the rows that finished at this step from the batch: the session (KV cache included), the chain
        and this tracker keep the live rows only. Returns the batch rows kept (None when nothing changed).

        Nothing leaves when the chain cannot follow a change of rows, or once every row has finished.
        """
        if not self.can_leave or self.done:
            return None
        keep = [index for index, row in enumerate(self.batch_rows) if not self.finished[row]]
        if len(keep) == len(self.batch_rows):
            return None
        totals = self.scores.tolist()
        for index, row in enumerate(self.batch_rows):
            if self.finished[row]:
                self.final_scores[row] = totals[index]
                if self.logprobs is not None:
                    self.final_logprobs[row] = self.logprobs.records(index, len(self.tokens[row]), self.job)
        kept = torch.tensor(keep, dtype=torch.long, device=session.device)
        session.select(kept)
        self.job.chain.reorder(kept)
        self.batch_rows = [self.batch_rows[index] for index in keep]
        self.generators = None if self.generators is None else [self.generators[index] for index in keep]
        self.scores = self.scores.index_select(0, kept)
        self.finished_mask = self.finished_mask.index_select(0, kept)
        self._held = False
        if self.logprobs is not None:
            self.logprobs.select(kept)
        return kept

    def hypotheses(self) -> list[Hypothesis]:
        """Each row's hypothesis, in row order."""
        job = self.job
        texts = [t.final_text for t in self.texts] if self.texts else [job.decode(ids) for ids in self.tokens]
        totals, logprobs = list(self.final_scores), list(self.final_logprobs)
        for index, (row, total) in enumerate(zip(self.batch_rows, self.scores.tolist())):
            totals[row] = total
            if self.logprobs is not None:
                logprobs[row] = self.logprobs.records(index, len(self.tokens[row]), job)
        return [
            Hypothesis(
                text=texts[row], generated_ids=self.tokens[row], score=totals[row], finish_reason=self.reasons[row],
                logprobs=logprobs[row],
            )  # fmt: skip
            for row in range(self.rows)
        ]

    def outcomes(self) -> list[Outcome]:
        """One outcome per row, in row order."""
        return [
            Outcome([hypothesis], steps=None if self.records is None else self.records[row])
            for row, hypothesis in enumerate(self.hypotheses())
        ]


def _can_reorder(chain: Chain | MixedChain) -> bool:
    """Whether every processor of ``chain`` can follow rows that leave the batch."""
    try:
        chain.require(("reorder",), "single")
    except StrategyError:
        return False
    return True


def dense_scores(scores: Scores | MixedScores) -> torch.Tensor:
    """The ``[R, V]`` processed scores that a chain's result stands for (a candidate set or groups made dense)."""
    return scores.to_dense() if isinstance(scores, Candidates | MixedScores) else scores
