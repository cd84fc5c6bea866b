"""The default search: one hypothesis per prompt, one token per step, chosen by the chain's selector.

    prefill → per step: chain.run → chain.choose → append → accept → forward the new token

With the ``greedy`` selector it is greedy decoding, with ``sample`` ancestral sampling.
"""

from __future__ import annotations

from typing import Literal

import torch

from decoders.config import SearchConfig
from decoders.searches.base import RowTracker, Search, SearchJob, SearchRun


class SingleSearch(Search):
    """One hypothesis per prompt: at every step the selector picks the next token of each live row.

    A row ends at an end-of-sequence token, a stop string, or its ``max_new_tokens``, and then leaves the batch
    (KV cache included) when the chain's processors can follow a change of rows. Its score is the summed
    log-probability of its tokens under the processed distribution. Rows may join while it runs
    (``job.joins``): they start at the next step, beside the others.

    Example:
        >>> decoders.generate("Hi", {"search": {"kind": "single"}}, model=(model, tokenizer)).score  # doctest: +SKIP
        -12.7
    """

    per_row_chains = True
    joins_running = True

    def run(self, job: SearchJob, logits: torch.Tensor | None = None) -> SearchRun:
        """The loop; ``logits`` are the first step's when the caller already ran the prompts (else they are run)."""
        session, chain, batch = job.session, job.chain, job.batch
        tracker = RowTracker(job, keep=not job.open)
        while True:
            if job.joins:
                joining, job.joins[:] = list(job.joins), []
                batch.add(joining)
            if not len(batch):
                if not job.open:
                    break
                yield []  # idle until rows join
                continue
            if logits is None:
                logits = session.forward().logits
            stages, observer = tracker.observer(logits)
            scores = chain.run(session.ids, logits, observer)
            tokens = tracker.hold_finished(chain.choose(scores, tracker.generators))
            batch.append(tokens)
            yield tracker.record(logits, scores, tokens, stages)
            logits = None
            if tracker.done and not job.open and not job.joins:
                break
            tracker.leave()
        return tracker.outcomes() if not job.open else []


class SingleConfig(SearchConfig):
    """One hypothesis per prompt; the selector picks each token (greedy or sampling)."""

    kind: Literal["single"] = "single"

    def build(self) -> SingleSearch:
        return SingleSearch()
