"""Beam search and beam sampling, with transformers' parameters and semantics.

Per prompt, ``num_beams`` running hypotheses. At each step (as transformers' ``generate(num_beams=…)``):

1. every beam's logits become log-softmax scores, which the chain's processors transform;
2. each beam's running score is added, and over all ``num_beams × V`` continuations of a prompt the selector
   picks ``K = max(2, 1 + number of EOS ids) · num_beams`` of them: the best (``greedy``) or drawn without
   replacement in proportion to ``softmax`` (``sample``, Gumbel-top-k with the prompt's generator);
3. among the best ``num_beams`` picks, those that end (an EOS token, or ``max_new_tokens``) join the prompt's
   finished hypotheses with the score ``sum / length ** length_penalty`` (the ``num_beams`` best are kept);
4. the best ``num_beams`` picks that did not end are the next running beams (rows are reordered: the KV
   cache, and every processor through ``reorder``).

A prompt is done when its finished hypotheses cannot improve: with ``early_stopping=True`` as soon as it has
``num_beams`` of them; otherwise when the best running beam, scored at its current length
(``early_stopping=False``) or at the longest length it could reach (``"never"`` with a positive
``length_penalty``), cannot beat the worst finished one. Done prompts leave the batch; the rest go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator

from decoders.config import SearchConfig
from decoders.results import FinishReason, Hypothesis, StepLogprobs
from decoders.searches.base import LogprobBuffer, Outcome, Search, SearchJob, SearchRun, step_logprobs
from decoders.trace import BeamRecord, BeamStepRecord

#: the score transformers gives beams that must not be chosen (the first step's copies, finished beams)
UNCHOSEN = -1.0e9


@dataclass
class _Finished:
    token_ids: list[int]
    score: float
    reason: FinishReason
    logprobs: list[StepLogprobs] | None


class BeamSearch(Search):
    """Beam search (``greedy`` selector) or beam sampling (``sample`` selector), as transformers runs them.

    Args:
        num_beams: running hypotheses per prompt, ≥ 1.
        length_penalty: finished scores are divided by ``length ** length_penalty`` (> 0 favours longer).
        early_stopping: ``True`` stops a prompt once it has ``num_beams`` finished hypotheses; ``False`` (the
            default) and ``"never"`` stop when no running beam can do better (see the module docstring).
        num_return_sequences: how many ranked hypotheses each result carries, ≤ ``num_beams``.

    Example:
        >>> strategy = {"search": {"kind": "beam", "num_beams": 4, "num_return_sequences": 2}}
        >>> result = decoders.generate("The cat", strategy, model=(model, tokenizer))[0]  # doctest: +SKIP
        >>> [h.score for h in result.alternatives]  # doctest: +SKIP
        [-0.61, -0.64]
    """

    kind = "beam"
    requires = ("reorder",)
    streams = False
    stop_strings = False
    selectors = ("greedy", "sample")

    def __init__(
        self,
        num_beams: int,
        length_penalty: float = 1.0,
        early_stopping: bool | Literal["never"] = False,
        num_return_sequences: int = 1,
    ):
        if num_return_sequences > num_beams:
            raise ValueError(f"num_return_sequences ({num_return_sequences}) must be ≤ num_beams ({num_beams})")
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.num_return_sequences = num_return_sequences

    def _best_length(self, length: int, max_new_tokens: int) -> int:
        """The length at which the best running beam is scored to decide whether it can still win."""
        if self.early_stopping == "never" and self.length_penalty > 0:
            return max_new_tokens
        return length

    def run(self, job: SearchJob) -> SearchRun:
        yield from ()  # nothing to stream: a prompt's hypotheses are decided at its end
        session, chain, beams = job.session, job.chain, self.num_beams
        device, prompts = session.device, session.rows
        logits = session.forward().logits
        vocab = logits.shape[-1]
        fork = torch.arange(prompts, device=device).repeat_interleave(beams)
        session.select(fork)
        chain.reorder(fork)
        logits = logits.index_select(0, fork)
        live = list(range(prompts))  # the prompts whose beams are in the session, in row order
        running = torch.zeros((prompts, beams), device=device)
        running[:, 1:] = UNCHOSEN  # all beams start equal: only the first one's continuations count
        keep = max(2, 1 + len(job.eos_token_ids)) * beams
        eos = torch.tensor(sorted(job.eos_token_ids), dtype=torch.long, device=device)
        pools: list[list[_Finished]] = [[] for _ in range(prompts)]
        improvable = [True] * prompts
        buffer = (
            LogprobBuffer(prompts * beams, job.max_new_tokens, job.logprobs, device)
            if job.logprobs is not None
            else None
        )
        traces: list[list[BeamStepRecord]] | None = [[] for _ in range(prompts)] if job.trace else None
        for step in range(job.max_new_tokens):
            length = step + 1
            if step:
                logits = session.forward().logits
            log_probs = logits.log_softmax(dim=-1)
            processed = chain.process(session.ids, log_probs)
            batch = len(live)
            totals = (processed.view(batch, beams, vocab) + running.unsqueeze(-1)).view(batch, beams * vocab)
            generators = None if job.generators is None else [job.generators[p] for p in live]
            picks = chain.selector.select_many(totals, keep, generators)
            pick_scores = totals.gather(1, picks)
            parents = picks // vocab + torch.arange(batch, device=device).unsqueeze(-1) * beams  # session rows
            tokens = picks % vocab
            if length == job.max_new_tokens:
                ends = torch.ones_like(tokens, dtype=torch.bool)
            else:
                ends = torch.isin(tokens, eos)

            self._finish(
                job, pools, improvable, live, pick_scores, parents, tokens, ends, length, buffer, log_probs, processed
            )

            continuing = pick_scores + ends.float() * UNCHOSEN
            order = torch.topk(continuing, beams, dim=-1).indices
            if traces is not None:  # the beams of this step: the ones that go on, or at the last step the best picks
                shown = order if length < job.max_new_tokens else torch.arange(beams, device=device).expand(batch, -1)
                self._trace(
                    job,
                    traces,
                    step,
                    live,
                    parents.gather(1, shown),
                    tokens.gather(1, shown),
                    pick_scores.gather(1, shown),
                    pools,
                )
            running = continuing.gather(1, order)
            rows, new_tokens = parents.gather(1, order).flatten(), tokens.gather(1, order).flatten()
            if buffer is not None:
                buffer.select(rows)
                buffer.write(step, *LogprobBuffer.measure(log_probs[rows], processed[rows], new_tokens, buffer.n, normalised=True))
            session.select(rows)
            chain.reorder(rows)
            session.append(new_tokens)
            chain.accept(new_tokens)
            if length == job.max_new_tokens:
                break
            stay = self._update_done(pools, improvable, live, running, length, job.max_new_tokens)
            if len(stay) < batch:
                rows = (
                    torch.tensor(stay, device=device).unsqueeze(-1) * beams + torch.arange(beams, device=device)
                ).flatten()
                session.select(rows)
                chain.reorder(rows)
                if buffer is not None:
                    buffer.select(rows)
                running = running[stay]
                live = [live[i] for i in stay]
                if not live:
                    break
        return [
            Outcome(
                [
                    Hypothesis(
                        text=job.decode(f.token_ids),
                        generated_ids=f.token_ids,
                        score=f.score,
                        finish_reason=f.reason,
                        logprobs=f.logprobs,
                    )
                    for f in pools[prompt][: self.num_return_sequences]
                ],
                beam_steps=None if traces is None else traces[prompt],
            )
            for prompt in range(prompts)
        ]

    def _finish(
        self, job, pools, improvable, live, pick_scores, parents, tokens, ends, length, buffer, log_probs, processed
    ):
        """Add the best ``num_beams`` picks that end (and may still count) to their prompts' finished hypotheses."""
        beams = self.num_beams
        ending = ends[:, :beams] & (pick_scores[:, :beams] > UNCHOSEN / 2)  # never a removed token or a start copy
        if not bool(ending.any()):
            return
        final = (pick_scores[:, :beams] / (length**self.length_penalty)).tolist()
        start = job.session.prompt_width
        new: dict[int, list[_Finished]] = {}
        for i, j in ending.nonzero().tolist():
            prompt = live[i]
            if not improvable[prompt] or (self.early_stopping is True and len(pools[prompt]) == beams):
                continue
            row, token = int(parents[i, j]), int(tokens[i, j])
            ids = job.session.ids[row, start:].tolist() + [token]
            reason: FinishReason = "eos" if token in job.eos_token_ids else "length"
            logprobs = None
            if buffer is not None:
                measured = LogprobBuffer.measure(
                    log_probs[row : row + 1], processed[row : row + 1], tokens[i, j : j + 1], buffer.n, normalised=True
                )
                logprobs = buffer.records(row, length - 1, job) + [
                    step_logprobs(*(t[0].tolist() for t in measured), job)
                ]
            new.setdefault(prompt, []).append(_Finished(ids, final[i][j], reason, logprobs))
        for prompt, entries in new.items():
            merged = sorted(pools[prompt] + entries, key=lambda f: -f.score)  # stable: earlier entries win ties
            pools[prompt] = merged[:beams]

    def _update_done(self, pools, improvable, live, running, length, max_new_tokens) -> list[int]:
        """Mark prompts whose finished hypotheses can no longer improve; return the indices (in ``live``) that go on."""
        best_length = self._best_length(length, max_new_tokens)
        best = (running[:, 0] / (best_length**self.length_penalty)).tolist()
        stay = []
        for i, prompt in enumerate(live):
            pool = pools[prompt]
            full = len(pool) == self.num_beams
            if full and improvable[prompt]:
                improvable[prompt] = best[i] > min(f.score for f in pool)
            if improvable[prompt] and not (full and self.early_stopping is True):
                stay.append(i)
        return stay

    def _trace(self, job, traces, step, live, parents, tokens, scores, pools) -> None:
        """One :class:`BeamStepRecord` per live prompt: the step's beams (``[batch, num_beams]`` parent rows,
        new tokens and cumulative scores) and the finished hypotheses so far."""
        start = job.session.prompt_width
        for i, prompt in enumerate(live):
            beams = []
            for parent, token, score in zip(parents[i].tolist(), tokens[i].tolist(), scores[i].tolist()):
                if score > UNCHOSEN / 2:
                    ids = job.session.ids[parent, start:].tolist() + [token]
                    beams.append(BeamRecord(token_ids=ids, text=job.decode(ids), score=score))
            finished = [
                BeamRecord(token_ids=f.token_ids, text=job.decode(f.token_ids), score=f.score) for f in pools[prompt]
            ]
            traces[prompt].append(BeamStepRecord(step=step, row=prompt, beams=beams, finished=finished))


class BeamConfig(SearchConfig):
    """Beam search (greedy selector) or beam sampling (sample selector), with transformers' parameters."""

    kind: Literal["beam"] = "beam"
    num_beams: int = Field(default=4, ge=1, description="running hypotheses per prompt")
    length_penalty: float = Field(default=1.0, description="finished scores are divided by length ** length_penalty")
    early_stopping: bool | Literal["never"] = Field(
        default=False,
        description='true: stop at num_beams finished hypotheses; false or "never": when none can improve',
    )
    num_return_sequences: Annotated[int, Field(ge=1, description="ranked hypotheses per result, ≤ num_beams")] = 1

    @model_validator(mode="after")
    def _return_at_most_num_beams(self) -> BeamConfig:
        if self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) must be ≤ num_beams ({self.num_beams}): "
                "beam search keeps only num_beams finished hypotheses"
            )
        return self

    def build(self) -> BeamSearch:
        return BeamSearch(self.num_beams, self.length_penalty, self.early_stopping, self.num_return_sequences)
