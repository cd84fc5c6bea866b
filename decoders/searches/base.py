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
from decoders.processors.base import Candidates
from decoders.results import Hypothesis, StepEvent, StepLogprobs, TokenLogprob
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


class Search:
    """Base class of searches: ``run(job)`` yields step events and returns each prompt's ranked hypotheses.

    Class attributes say what the search needs, so that it fails when the strategy is built, not mid-run:
    ``requires`` lists the processor state methods it calls beside ``reset``/``accept`` (``"reorder"`` for
    searches that fork or drop rows), ``streams`` whether :func:`decoders.stream` can show its tokens as they
    are chosen, ``stop_strings`` whether it honours stop strings, and ``selectors`` the selector kinds it
    works with (None: any).
    """

    kind: str = "search"
    requires: tuple[str, ...] = ()
    streams: bool = True
    stop_strings: bool = True
    selectors: tuple[str, ...] | None = None

    def check(self, chain: Chain) -> None:
        """Raise :class:`StrategyError` if ``chain`` cannot be used with this search."""
        if self.selectors is not None and chain.selector.kind not in self.selectors:
            raise StrategyError(
                f"the '{self.kind}' search works with the {' or '.join(repr(s) for s in self.selectors)} selector, "
                f"not '{chain.selector.kind}'"
            )
        chain.require(self.requires, self.kind)

    def run(self, job: SearchJob) -> SearchRun:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def processed_log_probs(scores: Scores, token_ids: torch.LongTensor) -> torch.Tensor:
    """Log-probabilities ``[R, m]`` of ``token_ids [R, m]`` under softmax(scores) (``-inf`` where removed)."""
    if isinstance(scores, Candidates):
        values = scores.values.float()
        norm = torch.logsumexp(values, dim=-1, keepdim=True)
        hits = scores.ids.unsqueeze(1) == token_ids.unsqueeze(-1)  # [R, m, k]
        found = torch.where(hits, values.unsqueeze(1), float("-inf")).amax(dim=-1)
        return found - norm
    values = scores.float()
    return values.gather(1, token_ids) - torch.logsumexp(values, dim=-1, keepdim=True)


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
        raw = logits.gather(1, ids)
        if not normalised:
            raw = raw - torch.logsumexp(logits, dim=-1, keepdim=True)
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
