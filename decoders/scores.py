"""Processed scores, in their three forms behind one interface.

A chain's result (:meth:`Chain.run <decoders.chain.Chain.run>`) is one of

* a dense ``[B, V]`` tensor (``-inf`` for removed tokens),
* a :class:`~decoders.processors.base.Candidates` set (``[B, k]`` values and token ids: the only tokens left),
* a :class:`MixedScores` (a mixed-strategy batch: each group's scores, dense or candidates, kept apart),

and searches read any of them through :func:`to_dense`, :func:`log_probs` and :func:`step_records`: the candidate
set and the mixed scores answer for themselves (``to_dense()``, ``log_probs(ids)``), a plain tensor is the one
other case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from decoders.processors.base import Candidates
from decoders.trace import step_records as _stage_records

#: a chain's result: dense, a candidate set, or a mixed batch's groups
Scores = torch.Tensor | Candidates


def to_dense(scores: Any) -> torch.Tensor:
    """The ``[B, V]`` processed scores that ``scores`` stand for."""
    return scores if isinstance(scores, torch.Tensor) else scores.to_dense()


def log_probs(scores: Any, token_ids: torch.LongTensor) -> torch.Tensor:
    """Log-probabilities ``[R, m]`` of ``token_ids [R, m]`` under softmax(scores) (``-inf`` where removed)."""
    if isinstance(scores, torch.Tensor):
        # log_softmax is one fused pass over the vocabulary; logsumexp is several (and slow when threads contend)
        return torch.log_softmax(scores.float(), dim=-1).gather(1, token_ids)
    return scores.log_probs(token_ids)


def step_records(scores: Any, step: int, stages: list | None, tokens: torch.Tensor, rows: list[int], tokenizer: Any, top: int) -> list:
    """The trace records of batch rows ``rows`` for one chain run: from the observer's ``stages``, or, for a mixed
    batch, from each group's own stages."""
    if isinstance(scores, MixedScores):
        return scores.step_records(step, tokens, rows, tokenizer, top)
    return _stage_records(step, stages, tokens, tokenizer, rows=rows, top=top) if stages else []


@dataclass
class MixedScores:
    """Processed scores of a mixed batch: one part per group of rows (dense ``[b, V]`` or a candidate set).

    Args:
        parts: each group's scores, in group order.
        rows: each group's batch rows (``[b]`` long tensors), in group order.
        stages: when traced, each group's stages (``("model", logits)`` then one per processor).
    """

    parts: list[Scores]
    rows: list[torch.LongTensor]
    stages: list[list[tuple[str, Scores]]] | None = None

    def to_dense(self) -> torch.Tensor:
        """The ``[B, V]`` processed scores of every row (each group's made dense, in batch order)."""
        parts = [to_dense(part) for part in self.parts]
        out = parts[0].new_empty((sum(len(r) for r in self.rows), parts[0].shape[-1]))
        for rows, part in zip(self.rows, parts):
            out[rows] = part
        return out

    def gather_rows(self, per_group: Sequence[torch.Tensor]) -> torch.Tensor:
        """One tensor in batch order from one tensor per group (their rows in the groups' order)."""
        first = per_group[0]
        out = first.new_empty((sum(len(r) for r in self.rows), *first.shape[1:]))
        for rows, values in zip(self.rows, per_group):
            out[rows] = values
        return out


    def log_probs(self, token_ids: torch.LongTensor) -> torch.Tensor:
        """Each group's :func:`log_probs` of its rows' ``token_ids``, in batch order."""
        return self.gather_rows([log_probs(part, token_ids[rows]) for part, rows in zip(self.parts, self.rows)])

    def step_records(self, step: int, tokens: torch.Tensor, rows: list[int], tokenizer: Any, top: int) -> list:
        """The trace records of batch rows ``rows``, from each group's own stages (``row`` is the batch row)."""
        records = []
        wanted = set(rows)
        for group_rows, group_stages in zip(self.rows, self.stages or []):
            batch = group_rows.tolist()
            local = [i for i, row in enumerate(batch) if row in wanted]
            if local:
                group = _stage_records(step, group_stages, tokens[group_rows], tokenizer, rows=local, top=top)
                records += [r.model_copy(update={"row": batch[r.row]}) for r in group]
        return records


