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

Diverse beam search (Vijayakumar et al. 2016; transformers' ``num_beam_groups``, ``diversity_penalty``): the beams
of a prompt form ``num_beam_groups`` groups of ``num_beams / num_beam_groups``, each an independent beam search
with its own finished hypotheses, except that at each step the groups choose in order and every token's score
in group g is lowered by ``diversity_penalty`` times the number of times the earlier groups of the same prompt
chose it at this step (Hamming diversity; subtracted after the chain's processors, where transformers puts it
first — the same unless a processor rescales scores). A group that is done no longer counts. At the end, all
groups' finished hypotheses are ranked together. One group is plain beam search.

A prompt (a group) is done when its finished hypotheses cannot improve: with ``early_stopping=True`` as soon as it has
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

    requires = ("reorder",)
    selector_methods = ("select_many",)
    streams = False
    stop_strings = False

    def __init__(
        self,
        num_beams: int,
        length_penalty: float = 1.0,
        early_stopping: bool | Literal["never"] = False,
        num_return_sequences: int = 1,
        num_beam_groups: int = 1,
        diversity_penalty: float = 0.0,
    ):
        if num_return_sequences > num_beams:
            raise ValueError(f"num_return_sequences ({num_return_sequences}) must be ≤ num_beams ({num_beams})")
        if num_beams % num_beam_groups:
            raise ValueError(f"num_beam_groups ({num_beam_groups}) must divide num_beams ({num_beams})")
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.num_return_sequences = num_return_sequences
        self.num_beam_groups = num_beam_groups
        self.diversity_penalty = diversity_penalty

    @property
    def group_size(self) -> int:
        """Beams per group (all of them without groups)."""
        return self.num_beams // self.num_beam_groups

    def _best_length(self, length: int, max_new_tokens: int) -> int:
        """The length at which the best running beam is scored to decide whether it can still win."""
        if self.early_stopping == "never" and self.length_penalty > 0:
            return max_new_tokens
        return length

    def rows_per_prompt(self) -> tuple[int, str | None]:
        return self.num_beams, "num_beams"

    def run(self, job: SearchJob) -> SearchRun:
        session, chain, batch = job.session, job.chain, job.batch
        groups, beams = self.num_beam_groups, self.group_size
        device, prompts = session.device, session.rows
        logits = session.forward().logits
        vocab = logits.shape[-1]
        prompt_generators = job.generators  # one per prompt (its beams share it)
        fork = torch.arange(prompts, device=device).repeat_interleave(groups * beams)
        batch.select(fork)
        logits = logits.index_select(0, fork)
        # a unit is one group of one prompt (unit = prompt · groups + group), with `beams` rows in the session
        units = prompts * groups
        live = list(range(units))  # the units whose beams are in the session, in row order
        running = torch.zeros((units, beams), device=device)
        running[:, 1:] = UNCHOSEN  # all beams start equal: only the first one's continuations count
        keep = max(2, 1 + len(job.eos_token_ids)) * beams
        eos = torch.tensor(sorted(job.eos_token_ids), dtype=torch.long, device=device)
        pools: list[list[_Finished]] = [[] for _ in range(units)]
        improvable = [True] * units
        buffer = (
            LogprobBuffer(units * beams, job.max_new_tokens, job.logprobs, device) if job.logprobs is not None else None
        )
        if buffer is not None:
            batch.follow(buffer)
        traces: list[list[BeamStepRecord]] | None = [[] for _ in range(prompts)] if job.trace else None
        for step in range(job.max_new_tokens):
            length = step + 1
            last = length == job.max_new_tokens
            if step:
                logits = session.forward().logits
            log_probs = logits.log_softmax(dim=-1)
            processed = chain.process(session.ids, log_probs).view(len(live), beams, vocab)
            chosen_rows = torch.empty((len(live), beams), dtype=torch.long, device=device)
            chosen_tokens = torch.empty_like(chosen_rows)
            for group in range(groups):  # in order: each group is penalised by the tokens the earlier ones chose
                members = [i for i, unit in enumerate(live) if unit % groups == group]
                if not members:
                    continue
                index = torch.tensor(members, device=device)
                scores = processed.index_select(0, index)
                if group and self.diversity_penalty:
                    scores = scores - self.diversity_penalty * self._earlier_choices(
                        live, members, chosen_tokens, vocab
                    )
                totals = (scores + running[index].unsqueeze(-1)).view(len(members), beams * vocab)
                generators = None if prompt_generators is None else [prompt_generators[live[i] // groups] for i in members]
                picks = chain.selector.select_many(totals, keep, generators)
                pick_scores = totals.gather(1, picks)
                parents = picks // vocab + index.unsqueeze(-1) * beams  # session rows
                tokens = picks % vocab
                ends = torch.ones_like(tokens, dtype=torch.bool) if last else torch.isin(tokens, eos)
                member_units = [live[i] for i in members]
                self._finish(
                    job, pools, improvable, member_units, pick_scores, parents, tokens, ends, length, buffer, log_probs,
                    processed.view(-1, vocab),
                )  # fmt: skip
                continuing = pick_scores + ends.float() * UNCHOSEN
                order = torch.topk(continuing, beams, dim=-1).indices
                if (
                    traces is not None
                ):  # the beams of this step: the ones that go on, or at the last step the best picks
                    shown = torch.arange(beams, device=device).expand(len(members), -1) if last else order
                    self._trace(
                        job, traces, step, member_units, parents.gather(1, shown), tokens.gather(1, shown),
                        pick_scores.gather(1, shown), pools,
                    )  # fmt: skip
                running[index] = continuing.gather(1, order)
                chosen_rows[index] = parents.gather(1, order)
                chosen_tokens[index] = tokens.gather(1, order)
            rows, new_tokens = chosen_rows.flatten(), chosen_tokens.flatten()
            batch.select(rows)
            if buffer is not None:
                buffer.write(
                    step,
                    *LogprobBuffer.measure(
                        log_probs[rows], processed.view(-1, vocab)[rows], new_tokens, buffer.n, normalised=True
                    ),
                )
            batch.append(new_tokens)
            if last:
                break
            stay = self._update_done(pools, improvable, live, running, length, job.max_new_tokens)
            if len(stay) < len(live):
                rows = (
                    torch.tensor(stay, device=device).unsqueeze(-1) * beams + torch.arange(beams, device=device)
                ).flatten()
                batch.select(rows)
                running = running[stay]
                live = [live[i] for i in stay]
                if not live:
                    break
            yield []  # nothing to stream: a prompt's hypotheses are decided at its end
        outcomes = []
        for prompt in range(prompts):
            # every group's finished hypotheses, best first (stable: earlier groups win ties)
            merged = sorted(
                (f for unit in range(prompt * groups, (prompt + 1) * groups) for f in pools[unit]),
                key=lambda f: -f.score,
            )
            hypotheses = [
                Hypothesis(
                    text=job.decode(f.token_ids),
                    generated_ids=f.token_ids,
                    score=f.score,
                    finish_reason=f.reason,
                    logprobs=f.logprobs,
                )  # fmt: skip
                for f in merged[: self.num_return_sequences]
            ]
            outcomes.append(Outcome(hypotheses, beam_steps=None if traces is None else traces[prompt]))
        return outcomes

    def _earlier_choices(self, live, members, chosen_tokens, vocab) -> torch.Tensor:
        """``[members, 1, V]``: how often each token was chosen at this step by the earlier groups of each member's
        prompt (Hamming diversity, Vijayakumar et al. 2016)."""
        groups = self.num_beam_groups
        counts = chosen_tokens.new_zeros((len(members), vocab), dtype=torch.float32)
        for row, i in enumerate(members):
            prompt, group = divmod(live[i], groups)
            earlier = [j for j, unit in enumerate(live) if unit // groups == prompt and unit % groups < group]
            if earlier:
                tokens = chosen_tokens[earlier].flatten()
                counts[row] = torch.bincount(tokens, minlength=vocab)[:vocab].float()
        return counts.unsqueeze(1)

    def _finish(
        self, job, pools, improvable, live, pick_scores, parents, tokens, ends, length, buffer, log_probs, processed
    ):
        """Add the best ``group_size`` picks that end (and may still count) to their units' finished hypotheses.

        ``live`` here lists the unit of each row of the picks."""
        beams = self.group_size
        ending = ends[:, :beams] & (pick_scores[:, :beams] > UNCHOSEN / 2)  # never a removed token or a start copy
        if not bool(ending.any()):
            return
        final = (pick_scores[:, :beams] / (length**self.length_penalty)).tolist()
        start = job.session.prompt_width
        new: dict[int, list[_Finished]] = {}
        for i, j in ending.nonzero().tolist():
            unit = live[i]
            if not improvable[unit] or (self.early_stopping is True and len(pools[unit]) == beams):
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
            new.setdefault(unit, []).append(_Finished(ids, final[i][j], reason, logprobs))
        for unit, entries in new.items():
            merged = sorted(pools[unit] + entries, key=lambda f: -f.score)  # stable: earlier entries win ties
            pools[unit] = merged[:beams]

    def _update_done(self, pools, improvable, live, running, length, max_new_tokens) -> list[int]:
        """Mark units whose finished hypotheses can no longer improve; return the indices (in ``live``) that go on."""
        best_length = self._best_length(length, max_new_tokens)
        best = (running[:, 0] / (best_length**self.length_penalty)).tolist()
        stay = []
        for i, unit in enumerate(live):
            pool = pools[unit]
            full = len(pool) == self.group_size
            if full and improvable[unit]:
                improvable[unit] = best[i] > min(f.score for f in pool)
            if improvable[unit] and not (full and self.early_stopping is True):
                stay.append(i)
        return stay

    def _trace(self, job, traces, step, live, parents, tokens, scores, pools) -> None:
        """One :class:`BeamStepRecord` per unit: the step's beams (``[units, group_size]`` parent rows, new tokens
        and cumulative scores) and the unit's finished hypotheses so far."""
        start = job.session.prompt_width
        for i, unit in enumerate(live):
            prompt, group = divmod(unit, self.num_beam_groups)
            beams = []
            for parent, token, score in zip(parents[i].tolist(), tokens[i].tolist(), scores[i].tolist()):
                if score > UNCHOSEN / 2:
                    ids = job.session.ids[parent, start:].tolist() + [token]
                    beams.append(BeamRecord(token_ids=ids, text=job.decode(ids), score=score))
            finished = [
                BeamRecord(token_ids=f.token_ids, text=job.decode(f.token_ids), score=f.score) for f in pools[unit]
            ]
            traces[prompt].append(BeamStepRecord(step=step, row=prompt, group=group, beams=beams, finished=finished))


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
    num_beam_groups: int = Field(
        default=1, ge=1, description="diverse beam search: groups of num_beams / num_beam_groups beams"
    )
    diversity_penalty: float = Field(
        default=0.0, ge=0, description="diverse beam search: subtracted per earlier group's choice of the same token"
    )

    @model_validator(mode="after")
    def _consistent_counts(self) -> BeamConfig:
        if self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) must be ≤ num_beams ({self.num_beams}): "
                "beam search keeps only num_beams finished hypotheses"
            )
        if self.num_beams % self.num_beam_groups:
            raise ValueError(
                f"num_beam_groups ({self.num_beam_groups}) must divide num_beams ({self.num_beams}): every group has "
                "num_beams / num_beam_groups beams"
            )
        return self

    def build(self) -> BeamSearch:
        return BeamSearch(
            self.num_beams, self.length_penalty, self.early_stopping, self.num_return_sequences, self.num_beam_groups,
            self.diversity_penalty,
        )  # fmt: skip
