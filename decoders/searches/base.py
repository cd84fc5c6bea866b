"""The search contract: what a search is given (:class:`SearchJob`), what it returns, and shared helpers.

A search decides which sequences continue and which tokens they get; the chain decides the next-token
distribution of any one sequence. A search asks the chain for every distribution it uses, so any processor
chain composes with any search, plugin kinds included.

:meth:`Search.run` is a generator, advanced one step at a time by the engine: it drives the model session,
changes rows only through the job's :class:`~decoders.batch.Batch` (which the session, the chain and the
buffers follow), yields once per step the :class:`RowStep` of every row that got a token (an empty list for a
search that shows nothing until its end), and *returns* the ranked :class:`~decoders.results.Hypothesis` list of
every starting row, best first (an :class:`Outcome` each; rows already reported finished in a :class:`RowStep`
are not looked up again).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from decoders.batch import Batch, Row
from decoders.chain import Chain
from decoders.errors import StrategyError
from decoders.events import RowsAdded, RowsFinished, RowsSelected
from decoders.processors.base import Component
from decoders.scores import Scores, log_probs, step_records, to_dense
from decoders.results import FinishReason, Hypothesis, StepLogprobs, TokenLogprob
from decoders.selectors import Selector
from decoders.session import ModelSession
from decoders.text import DECODE, RowText
from decoders.trace import BeamStepRecord, StepRecord


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


#: what :meth:`Search.run` yields (each step's rows) and returns (one outcome per starting row, by origin)
SearchRun = Generator[list["RowStep"], None, list[Outcome]]


@dataclass
class SearchJob:
    """Everything one generation gives its search. The chain has been reset for the session's rows.

    Args:
        session: the model session; its rows are the prompts, left-padded, not yet run.
        chain: the built chain (processors and selector).
        batch: the rows, in session order; the session and the chain follow its events.
        tokenizer: decodes token ids.
        max_new_tokens: at most this many new tokens per sequence (≥ 1).
        eos_token_ids: ids that end a sequence (empty with ``ignore_eos``).
        stops: stop strings (a sequence ends when its text contains one; the text is cut before it).
        texts: decode text at every step (streaming); otherwise only when stop strings need it.
        trace: record every step (see :class:`~decoders.trace.StepRecord`).
        top: candidates per stage in a trace.
        logprobs: per generated token, log-probabilities with this many top alternatives; None for off.
        joins: rows waiting to join the batch (a search that takes joining rows, ``joins_running``, adds them at the
            start of a step); None for a batch that starts with all its rows.
        open: go on while the batch is empty, waiting for rows to join (the engine's shared batch).
    """

    session: ModelSession
    chain: Chain
    batch: Batch
    tokenizer: Any
    max_new_tokens: int
    eos_token_ids: frozenset[int]
    stops: list[str] = field(default_factory=list)
    texts: bool = False
    trace: bool = False
    top: int = 10
    logprobs: int | None = None
    joins: list[Row] | None = None
    open: bool = False
    _token_texts: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def generators(self) -> list[torch.Generator] | None:
        """The generators of the batch's rows, in batch order (None when no row has one)."""
        rows = self.batch.rows
        return [row.generator for row in rows] if any(row.generator is not None for row in rows) else None

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
    sample selector is its natural one: the CLI picks it when the user chose no strategy), ``per_row_chains``
    whether it picks tokens only through ``chain.choose`` (then the rows of a mixed-strategy batch may differ in
    their selectors too; otherwise they must share one, which the search reads as ``chain.selector``),
    ``selectors`` the selector kinds it works with (None: any), and ``joins_running`` whether requests can join its
    batch while it runs (the engine then shares one batch among all such requests; other searches run each
    start's requests as a batch of their own).
    """

    requires: tuple[str, ...] = ()
    selector_methods: tuple[str, ...] = ()
    selectors: tuple[str, ...] | None = None
    #: why only those selectors (the start of the refusal's message)
    selectors_reason: str = ""
    streams: bool = True
    stop_strings: bool = True
    samples: bool = False
    per_row_chains: bool = False
    joins_running: bool = False

    def check(self, chain: Chain) -> None:
        """Raise :class:`StrategyError` if ``chain`` cannot be used with this search."""
        chains = getattr(chain, "chains", [chain])
        for kind in dict.fromkeys(c.selector.kind for c in chains):
            if self.selectors is not None and kind not in self.selectors:
                allowed = " or ".join(f"'{k}'" for k in self.selectors)
                why = self.selectors_reason or f"the '{self.kind}' search works with the {allowed} selector only"
                raise StrategyError(f"{why}: use the {allowed} selector, not '{kind}'")
        missing = [m for m in self.selector_methods if getattr(type(chain.selector), m) is getattr(Selector, m)]
        if missing:
            raise StrategyError(
                f"the '{self.kind}' search needs a selector with {' and '.join(m + '(...)' for m in missing)} "
                f"(greedy and sample have it), which '{chain.selector.kind}' does not implement"
            )
        chain.require(self.requires, self.kind)

    def rows_per_prompt(self) -> tuple[int, str | None]:
        """How many batch rows one prompt takes at once, and the setting that says so (``("num_beams", 4)`` …)."""
        return 1, None

    def prepare(self, loaded: Any) -> None:
        """Check what the search needs of the model (``loaded``, a :class:`~decoders.models.LoadedModel`) before
        anything runs; raise :class:`~decoders.errors.GenerationError` with what to change. Default: nothing."""

    def run(self, job: SearchJob) -> SearchRun:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "kind")
        return f"{type(self).__name__}({params})"


def processed_log_probs(scores: Scores, token_ids: torch.LongTensor) -> torch.Tensor:
    """Log-probabilities ``[R, m]`` of ``token_ids [R, m]`` under softmax(scores) (``-inf`` where removed): the
    processed distribution, whatever form the chain's result has (see :mod:`decoders.scores`)."""
    return log_probs(scores, token_ids)


class LogprobBuffer:
    """Per row and step: the chosen token and ``n`` top alternatives, with raw and processed log-probabilities.

    Column 0 of each step is the chosen token; columns 1… are the ``n`` most likely tokens under the raw
    model. The buffer follows the batch's rows (:meth:`update`).

    Args:
        rows: number of rows.
        steps: number of steps to hold (it grows when a row needs more).
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

    def write(self, step: int | torch.LongTensor, ids: torch.Tensor, raw: torch.Tensor, processed: torch.Tensor) -> None:
        """Write one step of every row: at column ``step``, or at each row's own ``step[i]``."""
        if isinstance(step, int):
            self.ids[:, step], self.raw[:, step], self.processed[:, step] = ids, raw, processed
            return
        if int(step.max()) >= self.ids.shape[1]:
            self._grow(int(step.max()) + 1)
        rows = torch.arange(step.shape[0], device=step.device)
        self.ids[rows, step], self.raw[rows, step], self.processed[rows, step] = ids, raw, processed

    def _grow(self, steps: int) -> None:
        more = steps - self.ids.shape[1]
        self.ids, self.raw, self.processed = (
            torch.nn.functional.pad(t, (0, 0, 0, more)) for t in (self.ids, self.raw, self.processed)
        )

    def update(self, event: Any) -> None:
        """Follow the batch: rows selected (forks, drops) or added."""
        if isinstance(event, RowsSelected):
            rows = event.indices.to(self.ids.device)
            self.ids, self.raw, self.processed = (t.index_select(0, rows) for t in (self.ids, self.raw, self.processed))
        elif isinstance(event, RowsAdded):
            more = len(event.rows)
            steps = max([self.ids.shape[1]] + [row.max_new_tokens for row in event.rows])
            if steps > self.ids.shape[1]:
                self._grow(steps)
            self.ids, self.raw, self.processed = (
                torch.cat([t, t.new_zeros((more, *t.shape[1:]))]) for t in (self.ids, self.raw, self.processed)
            )

    def records(self, row: int, length: int, job: SearchJob, n: int | None = None) -> list[StepLogprobs]:
        """The first ``length`` steps of ``row`` as :class:`StepLogprobs` (with ``n`` alternatives: default all)."""
        columns = 1 + (self.n if n is None else n)
        ids, raw, processed = (t[row, :length, :columns].tolist() for t in (self.ids, self.raw, self.processed))
        return [step_logprobs(i, r, p, job) for i, r, p in zip(ids, raw, processed)]


def step_logprobs(ids: list[int], raw: list[float], processed: list[float], job: SearchJob) -> StepLogprobs:
    """One step's :class:`StepLogprobs` from lists (chosen first, then the alternatives)."""
    tokens = [
        TokenLogprob(token_id=i, token=job.token_text(i), raw=r, processed=p if p > float("-inf") else None)
        for i, r, p in zip(ids, raw, processed)
    ]
    return StepLogprobs(chosen=tokens[0], top=tokens[1:])


def chain_step_records(
    job: SearchJob, step: int, scores: Scores, stages: list | None, tokens: torch.Tensor, rows: list[int],
    top: int | None = None,
) -> list[StepRecord]:
    """The trace records of batch rows ``rows`` for one chain run (``row`` is the batch row): from the observer's
    ``stages``, or, for a mixed batch, from each group's own stages."""
    return step_records(scores, step, stages, tokens, rows, job.tokenizer, job.top if top is None else top)


@dataclass
class RowStep:
    """What one step gave one row, as a search reports it to the engine.

    Args:
        row: the row.
        token_id: its newest token (None when the step gave it none).
        text: the text that token made visible (see :class:`~decoders.results.StepEvent`).
        finished: whether the row has finished (at this step or before).
        record: the step's trace record, when the row is traced.
        outcome: the row's finished hypothesis, once it has finished (searches that report each row when it ends).
    """

    row: Row
    token_id: int | None
    text: str
    finished: bool
    record: StepRecord | None = None
    outcome: Outcome | None = None


class RowTracker:
    """The bookkeeping of searches that give each row one token per step (single, contrastive, best-of).

    It follows the batch (:meth:`update`): every row's tokens and text live in its :class:`~decoders.batch.Row`;
    the tracker keeps the batch-aligned tensors (scores, finished flags, log-probabilities). It ends rows by the
    row-end rule (:meth:`Row.end_reason <decoders.batch.Row.end_reason>`: EOS, a stop string, ``max_new_tokens``),
    sums each row's score (the log-probability of its tokens under the processed distribution), keeps traces and
    log-probabilities when a row asks, and reports each step as :class:`RowStep` objects, a finished row with its
    :class:`Outcome`.

    Finished rows leave the batch (:meth:`leave`) when every processor can follow a change of rows; otherwise
    they stay, given the padding id (:meth:`hold_finished`).

    Args:
        job: the search's job; the tracker follows ``job.batch``.
        keep: keep every row that ever ran, for :meth:`outcomes` (a run that ends); the engine's long-running
            batch keeps none.

    Example:
        >>> tracker = RowTracker(job)  # doctest: +SKIP
        >>> tokens = tracker.hold_finished(chain.choose(scores, tracker.generators))  # doctest: +SKIP
        >>> steps = tracker.record(logits, scores, tokens)  # doctest: +SKIP
        >>> tracker.leave()  # doctest: +SKIP
    """

    def __init__(self, job: SearchJob, keep: bool = True):
        self.job, self.batch = job, job.batch
        device = job.session.device
        rows = len(self.batch)
        self.finished_mask = torch.zeros(rows, dtype=torch.bool, device=device)  # per batch row
        self._held = False  # whether a finished row is still in the batch
        self.scores = torch.zeros(rows, dtype=torch.float64, device=device)  # per batch row
        self.logprobs: LogprobBuffer | None = None
        self.kept: list[Row] | None = list(self.batch.rows) if keep else None
        self._outcomes: dict[int, Outcome] = {}
        self._trace = False
        self.generators: list[torch.Generator] | None = None
        self._rows_changed(self.batch.rows)
        self.can_leave = _can_reorder(job.chain)
        self.batch.follow(self)

    def _rows_changed(self, new_rows: Sequence[Row]) -> None:
        """Per-row settings of the batch's rows: log-prob width, tracing, generators."""
        rows = self.batch.rows
        wanted = [row.logprobs for row in rows if row.logprobs is not None]
        if wanted and (self.logprobs is None or max(wanted) > self.logprobs.n):
            steps = max(row.max_new_tokens for row in rows)
            if self.logprobs is None:
                self.logprobs = LogprobBuffer(len(rows), steps, max(wanted), self.job.session.device)
            else:  # a row wants more alternatives than the buffer holds: widen it
                more = max(wanted) - self.logprobs.n
                buffer = self.logprobs
                buffer.ids, buffer.raw, buffer.processed = (
                    torch.nn.functional.pad(t, (0, more)) for t in (buffer.ids, buffer.raw, buffer.processed)
                )
                buffer.n = max(wanted)
        self._trace = any(row.trace for row in rows)
        self.generators = [row.generator for row in rows] if any(row.generator is not None for row in rows) else None

    def update(self, event: Any) -> None:
        """Follow the batch: rows selected (drops, forks) or added."""
        if isinstance(event, RowsSelected):
            index = event.indices.to(self.scores.device)
            self.scores = self.scores.index_select(0, index)
            self.finished_mask = self.finished_mask.index_select(0, index)
            self._held = bool(self.finished_mask.any())
            if self.logprobs is not None:
                self.logprobs.update(event)
            if self.kept is not None and event.rows:
                known = set(map(id, self.kept))
                self.kept += [row for row in event.rows if id(row) not in known]
            self._rows_changed(event.rows)
        elif isinstance(event, RowsFinished):
            self.finished_mask[list(event.rows)] = True
            self._held = True  # until they leave the batch
        elif isinstance(event, RowsAdded):
            more = len(event.rows)
            self.scores = torch.cat([self.scores, self.scores.new_zeros(more)])
            self.finished_mask = torch.cat([self.finished_mask, self.finished_mask.new_zeros(more)])
            if self.logprobs is not None:
                self.logprobs.update(event)
            if self.kept is not None:
                self.kept += event.rows
            self._rows_changed(event.rows)

    @property
    def done(self) -> bool:
        return all(row.finished for row in self.batch.rows)

    def observer(self, logits: torch.Tensor) -> tuple[list | None, Any]:
        """``(stages, observer)`` for :meth:`Chain.run` when a row is traced (the model's logits first), else
        ``(None, None)``."""
        if not self._trace:
            return None, None
        stages = [("model", logits)]
        return stages, lambda index, processor, before, after: stages.append((processor.kind, after))

    def hold_finished(self, tokens: torch.LongTensor) -> torch.LongTensor:
        """``tokens`` with the padding id in the finished rows still in the batch (not live for the chain)."""
        if self._held:
            return tokens.masked_fill(self.finished_mask, self.job.session.pad_id)
        return tokens

    def record(
        self, logits: torch.Tensor, scores: Scores, tokens: torch.LongTensor, stages: list | None = None
    ) -> list[RowStep]:
        """Take this step's tokens (``[batch rows]``, chosen from ``scores``, made from the model's ``logits``);
        one :class:`RowStep` per row that got a token."""
        job, rows = self.job, self.batch.rows
        active = [index for index, row in enumerate(rows) if not row.finished]
        if self.logprobs is not None:
            measured = LogprobBuffer.measure(logits, scores, tokens, self.logprobs.n)
            steps = torch.tensor([len(row.tokens) for row in rows], device=tokens.device)
            self.logprobs.write(steps, *measured)
            chosen_log_probs = measured[2][:, 0]  # column 0 is the chosen token
        else:
            chosen_log_probs = processed_log_probs(scores, tokens.unsqueeze(-1)).squeeze(-1)
        chosen_log_probs = chosen_log_probs.double()
        self.scores += chosen_log_probs.masked_fill(self.finished_mask, 0.0) if self._held else chosen_log_probs
        records: dict[int, StepRecord] = {}
        if stages:
            traced = [index for index in active if rows[index].trace]
            for top in sorted({rows[index].top for index in traced}):
                wanted = [index for index in traced if rows[index].top == top]
                for record in chain_step_records(job, 0, scores, stages, tokens, wanted, top=top):
                    records[record.row] = record
        chosen = tokens.tolist()
        ended: list[int] = []
        reasons: list[FinishReason] = []
        steps: list[RowStep] = []
        for index in active:
            row = rows[index]
            token = chosen[index]
            row.tokens.append(token)
            text = row.text
            if text is not None:
                text.push(token)
            record = records.get(index)
            if record is not None:
                record = record.model_copy(update={"step": len(row.tokens) - 1, "row": row.origin})
                row.records.append(record)
            reason = row.end_reason(token)
            if reason is not None:
                ended.append(index)
                reasons.append(reason)
                if text is not None and reason != "stop":
                    text.flush()
            new_text = text.take(final=reason is not None) if text is not None else ""
            steps.append(RowStep(row, token, new_text, reason is not None, record))
        if ended:
            self.batch.finish(ended, reasons)
            totals = self.scores[ended].tolist()
            outcomes = {i: self._outcome(i, total) for i, total in zip(ended, totals)}
            for step in steps:
                if step.finished:
                    index = next(i for i in ended if rows[i] is step.row)
                    step.outcome = outcomes[index]
        return steps

    def _outcome(self, index: int, total: float) -> Outcome:
        """The finished batch row ``index``'s outcome (kept for :meth:`outcomes` when the tracker keeps rows)."""
        row = self.batch.rows[index]
        logprobs = None
        if self.logprobs is not None and row.logprobs is not None:
            logprobs = self.logprobs.records(index, len(row.tokens), self.job, row.logprobs)
        text = row.text.final_text if row.text is not None else self.job.decode(row.tokens)
        hypothesis = Hypothesis(
            text=text, generated_ids=row.tokens, score=total, finish_reason=row.reason, logprobs=logprobs
        )
        outcome = Outcome([hypothesis], steps=row.records if row.trace else None)
        if self.kept is not None:
            self._outcomes[id(row)] = outcome
        return outcome

    def leave(self) -> torch.LongTensor | None:
        """Drop the rows that finished from the batch: the session (KV cache included), the chain and this
        tracker keep the live rows only. Returns the batch rows kept (None when nothing changed).

        Nothing leaves when the chain cannot follow a change of rows, or once every row has finished (unless
        ``all`` rows may go: the engine's batch, which new rows join).
        """
        if not self.can_leave or not self._held:
            return None
        if self.done and self.kept is not None:
            return None
        return self.batch.drop_finished()

    def outcomes(self) -> list[Outcome]:
        """One outcome per row that ran, in the order the rows came (their ``origin``)."""
        if self.kept is None:
            raise RuntimeError("this tracker keeps no rows: read each row's outcome from its RowStep")
        return [self._outcomes[id(row)] for row in sorted(self.kept, key=lambda row: row.origin)]


def _can_reorder(chain: Any) -> bool:
    """Whether every processor of ``chain`` can follow rows that leave the batch."""
    try:
        chain.require(("reorder",), "single")
    except StrategyError:
        return False
    return True


def dense_scores(scores: Scores) -> torch.Tensor:
    """The ``[R, V]`` processed scores that a chain's result stands for (a candidate set or groups made dense)."""
    return to_dense(scores)
