"""Best-of-n (vLLM's ``best_of``): ``n`` samples per prompt in one batch, ranked by their log-probability.

The prompts are run once; their rows are then forked ``n`` times (sample ``j`` of prompt ``i`` is row
``j · prompts + i``) and the single search runs on all of them together. With seeds, sample ``j`` of prompt ``i``
draws from a generator seeded ``seed_i + j · prompts``: for an int ``seed`` (``seed_i = seed + i``) that is
exactly the seed row ``j · prompts + i`` gets in ``generate(prompts * n, seed=seed)``, so the ``n`` samples are
the ones the single search gives for the repeated prompts.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from pydantic import Field

from decoders.chain import Chain
from decoders.config import SearchConfig
from decoders.errors import StrategyError
from decoders.results import Hypothesis
from decoders.searches.base import Outcome, Search, SearchJob, SearchRun
from decoders.searches.single import SingleSearch
from decoders.text import RowText
from decoders.selectors import Greedy

RankBy = Literal["sum", "mean"]


def ranking_score(hypothesis: Hypothesis, rank_by: RankBy) -> float:
    """The summed log-probability of a hypothesis's tokens, or its mean per token."""
    if rank_by == "mean":
        return hypothesis.score / max(len(hypothesis.generated_ids), 1)
    return hypothesis.score


class BestOfSearch(Search):
    """``n`` samples per prompt, the most likely first (all of them in ``alternatives``).

    Each result's ``score`` is the value it was ranked by: the summed (``rank_by="sum"``) or mean
    (``"mean"``) log-probability of its tokens under the processed distribution.

    Args:
        n: samples per prompt, ≥ 1.
        rank_by: ``"sum"`` or ``"mean"`` (per token: does not favour short answers).

    Example:
        >>> strategy = {"selector": {"kind": "sample"}, "search": {"kind": "best_of", "n": 4}}
        >>> [h.score for h in decoders.generate("Hi", strategy, seed=0).alternatives]  # doctest: +SKIP
        [-8.1, -9.7, -12.0, -15.3]
    """

    requires = ("reorder",)
    streams = False
    samples = True
    per_row_chains = True

    def __init__(self, n: int, rank_by: RankBy = "sum"):
        self.n = n
        self.rank_by = rank_by

    def check(self, chain: Chain) -> None:
        super().check(chain)
        if isinstance(chain.selector, Greedy) and self.n > 1:
            raise StrategyError(
                f"best_of with the greedy selector would give {self.n} identical samples: use the 'sample' selector"
            )

    def rows_per_prompt(self) -> tuple[int, str | None]:
        return self.n, "n"

    def run(self, job: SearchJob) -> SearchRun:
        session, batch, n = job.session, job.batch, self.n
        prompts = len(batch)
        logits = session.forward().logits
        index = torch.arange(prompts).repeat(n)
        # sample j of prompt i is row j · prompts + i, with a generator of its own
        samples = [
            dataclasses.replace(
                row, origin=j * prompts + row.origin, tokens=[], records=[], text=None if row.text is None else RowText(row.text.tokenizer, row.text.stops),
                generator=None if row.generator is None else torch.Generator().manual_seed(
                    row.generator.initial_seed() + j * prompts
                ),
            )  # fmt: skip
            for j in range(n)
            for row in batch.rows
        ]
        batch.select(index, samples)
        run = SingleSearch().run(job, logits[index.to(logits.device)])
        while True:  # each step of the samples, shown as none: the best sample is known at the end
            try:
                next(run)
            except StopIteration as stop:
                outcomes = stop.value
                break
            yield []
        results = []
        for prompt in range(prompts):
            mine = [outcomes[j * prompts + prompt] for j in range(n)]
            order = sorted(range(n), key=lambda j: -ranking_score(mine[j].hypotheses[0], self.rank_by))
            ranked = [
                mine[j].hypotheses[0].model_copy(update={"score": ranking_score(mine[j].hypotheses[0], self.rank_by)})
                for j in order
            ]
            results.append(Outcome(ranked, steps=mine[order[0]].steps))
        return results


class BestOfConfig(SearchConfig):
    """n samples per prompt in one batch; the most likely is the result (vLLM's best_of)."""

    kind: Literal["best_of"] = "best_of"
    n: int = Field(default=4, ge=1, description="samples per prompt")
    rank_by: RankBy = Field(default="sum", description="sum or mean log-probability of the sample's tokens")

    def build(self) -> BestOfSearch:
        return BestOfSearch(self.n, self.rank_by)
