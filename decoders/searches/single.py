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

    A row ends at an end-of-sequence token, a stop string, or ``max_new_tokens``, and then leaves the batch
    (KV cache included) when the chain's processors can follow a change of rows. Its score is the summed
    log-probability of its tokens under the processed distribution.

    Example:
        >>> decoders.generate("Hi", {"search": {"kind": "single"}}, model=(model, tokenizer)).score  # doctest: +SKIP
        -12.7
    """

    per_row_chains = True

    def run(self, job: SearchJob, logits: torch.Tensor | None = None) -> SearchRun:
        """The loop; ``logits`` are the first step's when the caller already ran the prompts (else they are run)."""
        session, chain = job.session, job.chain
        tracker = RowTracker(job, session.rows)
        for step in range(job.max_new_tokens):
            if step or logits is None:
                logits = session.forward().logits
            stages, observer = tracker.observer(logits)
            scores = chain.run(session.ids, logits, observer)
            tokens = tracker.hold_finished(chain.choose(scores, tracker.generators))
            session.append(tokens)
            chain.accept(tokens)
            yield tracker.record(step, logits, scores, tokens, stages)
            if tracker.done:
                break
            tracker.leave(session)
        return tracker.outcomes()


class SingleConfig(SearchConfig):
    """One hypothesis per prompt; the selector picks each token (greedy or sampling)."""

    kind: Literal["single"] = "single"

    def build(self) -> SingleSearch:
        return SingleSearch()
