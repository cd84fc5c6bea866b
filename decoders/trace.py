"""Step records: what each stage of the chain did to the distribution, and which token was chosen.

The driver fills these when tracing is on (``generate(..., trace=True)``); rendering them is the CLI's job.
Building a record costs a log-softmax, a top-k and an entropy per stage, never a sort of the vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel

from decoders.processors.base import Candidates
from decoders.processors.selection import row_slices

Scores = torch.Tensor | Candidates


class TokenProb(BaseModel):
    """One token and its probability.

    Args:
        token_id: the token id.
        token: the decoded text of that single id.
        probability: its probability under the distribution it was taken from.
    """

    token_id: int
    token: str
    probability: float


class StageRecord(BaseModel):
    """The distribution after one stage of the chain, for one row.

    Args:
        stage: the processor kind, or ``"model"`` for the raw logits.
        top: the most likely surviving candidates after this stage (softmax of its output), most likely first.
        survivors: how many tokens still have a finite logit.
        entropy: entropy of this stage's distribution, in nats.
    """

    stage: str
    top: list[TokenProb]
    survivors: int
    entropy: float


class StepRecord(BaseModel):
    """One generation step of one batch row.

    Args:
        step: index of the generated token (0 for the first new token).
        row: the batch row (the prompt's index).
        stages: the raw ``"model"`` stage, then one per processor in chain order.
        chosen: the selected token, with its probability under the final processed distribution.

    Example:
        >>> import decoders
        >>> result = decoders.generate("Hello", "top_k", model=(model, tokenizer), trace=True)  # doctest: +SKIP
        >>> [stage.survivors for stage in result.steps[0].stages]  # doctest: +SKIP
        [49152, 5]
    """

    step: int
    row: int
    stages: list[StageRecord]
    chosen: TokenProb


class DraftRecord(BaseModel):
    """One step of speculative decoding for one row: what was drafted, how much the target kept, its own token.

    Args:
        step: the speculative step (0 for the first; each commits one or more tokens).
        row: the batch row (the prompt's index).
        position: how many tokens the row had generated before this step.
        drafted: the drafted token ids (empty when the drafter proposed nothing).
        drafted_text: the text of each drafted token.
        accepted: how many drafted tokens the target accepted (a prefix of ``drafted``).
        token: the target's own token after the accepted ones: the correction where it disagreed with the
            draft, or the bonus token when it accepted everything.
        token_text: its text.

    Example:
        >>> result = decoders.generate("a b a b", {"search": {"kind": "speculative", "prompt_lookup_num_tokens": 4}},
        ...                            model=(model, tokenizer), trace=True)  # doctest: +SKIP
        >>> [(r.drafted_text, r.accepted) for r in result.speculation.steps][:1]  # doctest: +SKIP
        [([' a', ' b', ' a', ' b'], 3)]
    """

    step: int
    row: int
    position: int
    drafted: list[int]
    drafted_text: list[str]
    accepted: int
    token: int
    token_text: str


class SpeculationStats(BaseModel):
    """What speculative decoding did for one sequence.

    Args:
        drafted: drafted tokens the target model verified.
        accepted: drafted tokens it accepted.
        steps: target forward passes after the prompt (each commits ``accepted + 1`` tokens at most).
        records: one :class:`DraftRecord` per step when tracing, else None.
    """

    drafted: int
    accepted: int
    steps: int
    records: list[DraftRecord] | None = None

    @property
    def acceptance_rate(self) -> float | None:
        """accepted / drafted (None when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else None


class BeamRecord(BaseModel):
    """One hypothesis of a beam search at one step.

    Args:
        token_ids: the tokens generated so far on this beam.
        text: their text.
        score: the running beam's cumulative processed log-probability, or a finished hypothesis's final
            score (divided by ``length ** length_penalty``).
    """

    token_ids: list[int]
    text: str
    score: float


class BeamStepRecord(BaseModel):
    """The beams of one prompt after one beam-search step.

    Args:
        step: index of the generated token (0 for the first new token).
        row: the prompt's index.
        group: the group of diverse beam search (0 without groups; one record per group and step).
        beams: the beams that continue, best first.
        finished: the best finished hypotheses so far, best first.
    """

    step: int
    row: int
    group: int = 0
    beams: list[BeamRecord]
    finished: list[BeamRecord]


def _dense_view(scores: Scores) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The values ``[B, n]`` and, for a candidate set, the token ids of their columns."""
    if isinstance(scores, Candidates):
        return scores.values, scores.ids
    return scores, None


def _summarise(scores: Scores, top: int, chosen: torch.Tensor | None = None) -> dict[str, list]:
    """Top ids/log-probabilities, survivors and entropy of every row, and the probability of its ``chosen`` token
    (when given), as Python lists; computed a few rows at a time (see :func:`row_slices`)."""
    values, ids = _dense_view(scores)
    values = values.float()
    summary: dict[str, list] = {"ids": [], "log_probs": [], "survivors": [], "entropy": [], "chosen": []}
    for at in row_slices(*values.shape):
        part = values[at]
        log_probs = torch.log_softmax(part, dim=-1)
        top_log_probs, columns = torch.topk(log_probs, min(top, part.shape[-1]), dim=-1)
        summary["ids"] += (columns if ids is None else ids[at].gather(1, columns)).tolist()
        summary["log_probs"] += top_log_probs.tolist()
        summary["survivors"] += torch.isfinite(part).sum(dim=-1).tolist()
        if chosen is not None:
            if ids is None:
                chosen_log_probs = log_probs.gather(1, chosen[at].unsqueeze(-1)).squeeze(-1)
            else:
                hits = ids[at] == chosen[at].unsqueeze(-1)
                chosen_log_probs = torch.where(hits, log_probs, float("-inf")).amax(dim=-1)
            summary["chosen"] += chosen_log_probs.exp().tolist()
        # −Σ p log p; a removed token's 0 · −inf is NaN, which nansum leaves out
        summary["entropy"] += log_probs.exp().mul_(log_probs).nansum(dim=-1).neg_().tolist()
    return summary


def _candidates(ids: list[int], log_probs: list[float], texts: dict[int, str]) -> list[TokenProb]:
    return [
        TokenProb(token_id=i, token=texts[i], probability=math.exp(lp))
        for i, lp in zip(ids, log_probs)
        if lp > -math.inf
    ]


def top_candidates(scores: Scores, tokenizer: Any, top: int = 10) -> list[list[TokenProb]]:
    """The ``top`` most likely surviving tokens of every row (softmax of ``scores``), most likely first.

    Args:
        scores: logits ``[B, V]`` or a candidate set.
        tokenizer: decodes token ids to text (``tokenizer.decode([id])``).
        top: how many tokens to keep per row.

    Example:
        >>> import torch
        >>> class Chars:
        ...     def decode(self, ids): return "abc"[ids[0]]
        >>> [(t.token, round(t.probability, 2)) for t in top_candidates(torch.tensor([[0.0, 0.0, float("-inf")]]), Chars())[0]]
        [('a', 0.5), ('b', 0.5)]
    """
    summary = _summarise(scores, top)
    texts = {i: tokenizer.decode([i]) for row in summary["ids"] for i in row}
    return [_candidates(ids, log_probs, texts) for ids, log_probs in zip(summary["ids"], summary["log_probs"])]


def step_records(
    step: int,
    stages: Sequence[tuple[str, Scores]],
    chosen: torch.Tensor,
    tokenizer: Any,
    *,
    rows: Sequence[int] | None = None,
    top: int = 10,
) -> list[StepRecord]:
    """Turn the stages of one chain run into one :class:`StepRecord` per reported row.

    Args:
        step: index of the generated token.
        stages: ``(name, scores)`` in order: ``("model", raw logits)`` first, then each processor's kind and
            output (dense ``[B, V]`` or a candidate set).
        chosen: the selected token ids ``[B]``.
        tokenizer: decodes token ids to text (``tokenizer.decode([id])``).
        rows: the batch rows to report (all when None).
        top: how many of the most likely candidates to keep per stage.

    Example:
        >>> import torch
        >>> class Chars:
        ...     def decode(self, ids): return "abc"[ids[0]]
        >>> logits = torch.tensor([[0.0, 1.0, 2.0]])
        >>> [record] = step_records(0, [("model", logits)], torch.tensor([2]), Chars(), top=2)
        >>> [t.token for t in record.stages[0].top], record.chosen.token, record.stages[0].survivors
        (['c', 'b'], 'c', 3)
    """
    rows = range(chosen.shape[0]) if rows is None else rows
    last = len(stages) - 1
    summaries = [
        (name, _summarise(scores, top, chosen if i == last else None)) for i, (name, scores) in enumerate(stages)
    ]
    chosen_ids = chosen.tolist()
    chosen_probs = summaries[-1][1]["chosen"]
    wanted = {chosen_ids[r] for r in rows} | {i for _, s in summaries for r in rows for i in s["ids"][r]}
    texts = {token_id: tokenizer.decode([token_id]) for token_id in wanted}
    records = []
    for r in rows:
        stage_records = [
            StageRecord(
                stage=name,
                top=_candidates(s["ids"][r], s["log_probs"][r], texts),
                survivors=s["survivors"][r],
                entropy=s["entropy"][r],
            )
            for name, s in summaries
        ]
        chosen_token = TokenProb(token_id=chosen_ids[r], token=texts[chosen_ids[r]], probability=chosen_probs[r])
        records.append(StepRecord(step=step, row=r, stages=stage_records, chosen=chosen_token))
    return records
