"""Stochastic beam search (Kool, van Hoof, Welling 2019, "Stochastic Beams and Where to Find Them").

Sampling ``k`` whole sequences without replacement, top-down with Gumbel-top-k. Every hypothesis y has a
log-probability φ(y) (its tokens under the processed distribution, the one the single search samples from)
and a perturbed value G(y); the root has φ = 0 and G a standard Gumbel. A running hypothesis's children c get φ(c) = φ(y) +
log p(c | y) and G(c) = the Gumbel of mean φ(c) conditioned on the children's maximum being G(y):

    G'(c) = φ(c) + Gumbel,  Z = max_c G'(c),  G(c) = −log(exp(−G(y)) − exp(−Z) + exp(−G'(c)))

Of all children of all hypotheses of a prompt (a finished hypothesis is its own only child), the ``k`` with
the largest G go on. The ``k`` sequences left at the end are a sample without replacement from the sequence
distribution (cut at ``max_new_tokens``), in sampling order. Each comes with the estimator weight of the paper,
p(y) / q(y) with q(y) = 1 − exp(−exp(φ(y) − κ)) and κ the largest G of everything pruned (the (k+1)-th
largest perturbed value of the whole tree), for unbiased estimates of expectations from the k samples.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from decoders.config import SearchConfig
from decoders.results import Hypothesis
from decoders.searches.base import LogprobBuffer, Outcome, Search, SearchJob, SearchRun
from decoders.selectors import row_gumbels


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 − exp(x))`` for ``x ≤ 0``, accurate on both sides of −log 2."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def conditioned_gumbels(parent: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """The children's perturbed values ``[R, V]`` given their parents' ``[R, 1]`` (the module docstring's formula,
    computed stably: the largest child gets exactly its parent's value; ``-inf`` stays ``-inf``)."""
    largest = perturbed.amax(dim=-1, keepdim=True)
    v = parent - perturbed + log1mexp(perturbed - largest)
    return parent - v.clamp(min=0) - torch.log1p(torch.exp(-v.abs()))


class StochasticBeamSearch(Search):
    """``num_beams`` sequences sampled without replacement (Gumbel-top-k), ``num_return_sequences`` returned.

    A result's ``score`` is the sequence's log-probability under the processed distribution; the hypotheses are
    in sampling order (the first is an ordinary sample), each with its estimator ``weight``.

    Args:
        num_beams: sequences sampled per prompt (k), ≥ 1.
        num_return_sequences: how many of them each result carries (the first ones drawn), ≤ ``num_beams``.

    Example:
        >>> strategy = {"selector": {"kind": "sample"}, "search": {"kind": "stochastic_beam", "num_beams": 4}}
        >>> len({tuple(h.generated_ids) for h in decoders.generate("Hi", strategy, seed=0).alternatives})  # doctest: +SKIP
        4
    """

    requires = ("reorder",)
    streams = False
    stop_strings = False
    samples = True
    selectors = ("sample",)
    selectors_reason = "stochastic beam search samples sequences"

    def __init__(self, num_beams: int, num_return_sequences: int | None = None):
        self.num_beams = num_beams
        self.num_return_sequences = num_return_sequences or num_beams

    def rows_per_prompt(self) -> tuple[int, str | None]:
        return self.num_beams, "num_beams"

    def run(self, job: SearchJob) -> SearchRun:
        session, chain, batch, k = job.session, job.chain, job.batch, self.num_beams
        prompts, device, start = session.rows, session.device, session.prompt_width
        logits = session.forward().logits
        generators = job.generators  # one per prompt (its hypotheses share it)
        fork = torch.arange(prompts, device=device).repeat_interleave(k)
        batch.select(fork)
        logits = logits.index_select(0, fork)
        vocab = logits.shape[-1]
        phi = torch.zeros((prompts, k), dtype=torch.float64, device=device)
        gumbel = torch.full((prompts, k), float("-inf"), dtype=torch.float64, device=device)
        # one root per prompt, perturbed by a Gumbel of its own (so that κ below has the distribution the estimator
        # assumes); the other slots start empty
        gumbel[:, 0] = row_gumbels((prompts, 1), generators, device).double().squeeze(-1)
        finished = torch.zeros((prompts, k), dtype=torch.bool, device=device)
        ended_by_eos = torch.zeros((prompts, k), dtype=torch.bool, device=device)
        lengths = torch.zeros((prompts, k), dtype=torch.long, device=device)
        kappa = torch.full((prompts,), float("-inf"), dtype=torch.float64, device=device)
        eos = torch.tensor(sorted(job.eos_token_ids), dtype=torch.long, device=device)
        pad = session.pad_id
        buffer = (
            LogprobBuffer(prompts * k, job.max_new_tokens, job.logprobs, device) if job.logprobs is not None else None
        )
        if buffer is not None:
            batch.follow(buffer)
        for step in range(job.max_new_tokens):
            if step:
                logits = session.forward().logits
            scores = chain.process(session.ids, logits)
            log_probs = scores.double().log_softmax(dim=-1)
            perturbed = log_probs + phi.view(-1, 1)  # φ of every child
            perturbed += row_gumbels((prompts, k * vocab), generators, device).view(-1, vocab)
            # G(c) rises with G'(c) within a hypothesis, so the k + 1 best children of a prompt are among the k + 1
            # best of each of its hypotheses: condition only those
            width = min(k + 1, vocab)
            top_perturbed, top_tokens = torch.topk(perturbed, width, dim=-1)
            children = conditioned_gumbels(gumbel.view(-1, 1), top_perturbed)
            children = children.masked_fill(~torch.isfinite(gumbel.view(-1, 1)), float("-inf"))
            children_phi = log_probs.gather(1, top_tokens) + phi.view(-1, 1)
            done = finished.view(-1)
            children[done] = float("-inf")  # a finished hypothesis is its own only child
            children[done, 0], top_tokens[done, 0] = gumbel.view(-1)[done], pad
            children_phi[done, 0] = phi.view(-1)[done]
            values, picks = torch.topk(children.view(prompts, k * width), min(k + 1, k * width), dim=-1)
            if values.shape[1] > k:
                kappa = torch.maximum(kappa, values[:, k])  # the largest pruned value so far
            values, picks = values[:, :k].contiguous(), picks[:, :k].contiguous()
            parents = picks // width
            tokens = top_tokens.view(prompts, k * width).gather(1, picks)
            was_finished = finished.gather(1, parents)
            alive = torch.isfinite(values)
            stops = ~was_finished & alive & torch.isin(tokens, eos)
            ended_by_eos = ended_by_eos.gather(1, parents) | stops
            lengths = lengths.gather(1, parents) + (~was_finished).long()
            finished = was_finished | stops | ~alive
            phi = children_phi.view(prompts, k * width).gather(1, picks)
            gumbel = values
            rows = (parents + torch.arange(prompts, device=device).unsqueeze(-1) * k).flatten()
            new_tokens = tokens.masked_fill(was_finished, pad).flatten()
            batch.select(rows)
            if buffer is not None:  # a hypothesis's steps after it finished lie past its length: never read
                buffer.write(step, *LogprobBuffer.measure(logits[rows], scores[rows], new_tokens, buffer.n))
            batch.append(new_tokens)
            if bool(finished.all()):
                break
            yield []  # nothing to stream: the sample is known at the end
        outcomes = []
        for prompt in range(prompts):
            order = torch.argsort(gumbel[prompt], descending=True, stable=True).tolist()
            hypotheses = []
            for beam in order[: self.num_return_sequences]:
                if not math.isfinite(float(gumbel[prompt, beam])):
                    continue
                row = prompt * k + beam
                ids = session.ids[row, start : start + int(lengths[prompt, beam])].tolist()
                log_p = float(phi[prompt, beam])
                inclusion = -math.expm1(-math.exp(log_p - float(kappa[prompt])))
                hypotheses.append(
                    Hypothesis(
                        text=job.decode(ids),
                        generated_ids=ids,
                        score=log_p,
                        finish_reason="eos" if bool(ended_by_eos[prompt, beam]) else "length",
                        weight=math.exp(log_p) / inclusion if inclusion > 0 else None,
                        logprobs=None if buffer is None else buffer.records(row, len(ids), job),
                    )  # fmt: skip
                )
            outcomes.append(Outcome(hypotheses))
        return outcomes


class StochasticBeamConfig(SearchConfig):
    """num_beams sequences sampled without replacement (Gumbel-top-k; Kool et al. 2019)."""

    kind: Literal["stochastic_beam"] = "stochastic_beam"
    num_beams: int = Field(default=4, ge=1, description="sequences sampled per prompt")
    num_return_sequences: int | None = Field(
        default=None, ge=1, description="how many each result carries (default: all)"
    )

    @model_validator(mode="after")
    def _return_at_most_num_beams(self) -> StochasticBeamConfig:
        if self.num_return_sequences is not None and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) must be ≤ num_beams ({self.num_beams})"
            )
        return self

    def build(self) -> StochasticBeamSearch:
        return StochasticBeamSearch(self.num_beams, self.num_return_sequences)
