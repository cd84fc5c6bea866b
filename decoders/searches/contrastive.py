"""Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation").

At each step, per row: take the ``top_k`` most likely tokens of the processed distribution p; run the model
on all of them at once (one batched forward of ``rows × top_k`` candidates over the KV cache); score each
candidate v as

    (1 − penalty_alpha) · p(v) − penalty_alpha · max_j cos(h_v, h_j)

where h is the model's last hidden layer, h_v the candidate's and h_j every earlier position's (the prompt's
included, its left padding not); keep the best candidate — its KV cache row, its hidden state and its next
logits — and go on. ``penalty_alpha = 0`` is greedy decoding. Rows that end (EOS, stop string) leave the batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from decoders.config import SearchConfig
from decoders.searches.base import RowTracker, Search, SearchJob, SearchRun, dense_scores


def degeneration_penalty(candidates: torch.Tensor, context: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``max_j cos(candidate, context_j)`` over the valid context positions: ``[R, k]``.

    Args:
        candidates: hidden states ``[R, k, H]``.
        context: hidden states of the earlier positions ``[R, T, H]``.
        valid: ``[R, T]``, False for positions that are not text (left padding).
    """
    candidates = torch.nn.functional.normalize(candidates.float(), dim=-1)
    context = torch.nn.functional.normalize(context.float(), dim=-1)
    cosine = torch.einsum("rkh,rth->rkt", candidates, context)
    return cosine.masked_fill(~valid.unsqueeze(1), float("-inf")).amax(dim=-1)


class ContrastiveSearch(Search):
    """Contrastive search: the likely token least similar to what was already said (see the module docstring).

    Args:
        penalty_alpha: weight of the degeneration penalty, in [0, 1]; 0 is greedy decoding.
        top_k: candidates per step, ≥ 1.

    Example:
        >>> strategy = {"search": {"kind": "contrastive", "penalty_alpha": 0.6, "top_k": 4}}
        >>> decoders.generate("DeepMind Company is", strategy, model=(model, tokenizer)).text  # doctest: +SKIP
    """

    per_row_chains = True
    selectors = ("greedy",)
    selectors_reason = "contrastive search picks tokens by its own score, deterministically"

    def __init__(self, penalty_alpha: float = 0.6, top_k: int = 4):
        self.penalty_alpha = penalty_alpha
        self.top_k = top_k

    def rows_per_prompt(self) -> tuple[int, str | None]:
        return self.top_k, "top_k"

    def run(self, job: SearchJob) -> SearchRun:
        session, chain, batch, k, alpha = job.session, job.chain, job.batch, self.top_k, self.penalty_alpha
        rows, device = session.rows, session.device
        tracker = RowTracker(job)
        first = session.forward(all_hidden=True)
        logits, context = first.logits, first.hidden
        valid = torch.arange(session.length, device=device).unsqueeze(0) >= torch.tensor(
            session.padding, device=device
        ).unsqueeze(-1)
        every_row = torch.arange(rows, device=device)
        while True:
            stages, observer = tracker.observer(logits)
            scores = chain.run(session.ids, logits, observer)
            top_probs, top_ids = torch.topk(dense_scores(scores).softmax(dim=-1), k, dim=-1)
            # the candidates are tentative rows of the model only: k copies of each row, then the best one
            session.select(every_row.repeat_interleave(k))
            session.append(top_ids.flatten())
            candidates = session.forward(hidden=True)
            hidden = candidates.hidden.view(rows, k, -1)
            contrast = (1 - alpha) * top_probs - alpha * degeneration_penalty(hidden, context, valid)
            best = contrast.masked_fill(top_probs == 0, float("-inf")).argmax(dim=-1)  # never a removed token
            session.select(every_row * k + best)
            tokens = tracker.hold_finished(top_ids.gather(1, best.unsqueeze(-1)).squeeze(-1))
            batch.accept(tokens)
            yield tracker.record(logits, scores, tokens, stages)
            if tracker.done:
                break
            context = torch.cat([context, hidden[every_row, best].unsqueeze(1)], dim=1)
            valid = torch.cat([valid, valid.new_ones((rows, 1))], dim=1)
            logits = candidates.logits.view(rows, k, -1)[every_row, best]
            kept = tracker.leave()
            if kept is not None:  # finished rows left the batch: the search's own per-row tensors follow
                kept = kept.to(device)
                context, valid, logits = context[kept], valid[kept], logits[kept]
                rows = len(kept)
                every_row = torch.arange(rows, device=device)
        return tracker.outcomes()


class ContrastiveConfig(SearchConfig):
    """Contrastive search: the likely token least similar to the text so far (Su et al. 2022)."""

    kind: Literal["contrastive"] = "contrastive"
    penalty_alpha: float = Field(default=0.6, ge=0, le=1, description="weight of the degeneration penalty; 0 is greedy")
    top_k: int = Field(default=4, ge=1, description="candidates scored per step")

    def build(self) -> ContrastiveSearch:
        return ContrastiveSearch(self.penalty_alpha, self.top_k)
