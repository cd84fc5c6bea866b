"""Speculative decoding: a cheap drafter proposes tokens, the model verifies them all in one forward pass.

    prefill → first token as usual → per step, for every live row:
      draft d tokens (prompt lookup, or a draft model run d times)
      → one forward pass of the model over [last token, d drafts] → d + 1 next-token distributions
      → the chain processes each of them with the prefix up to that position
      → keep the drafts the target agrees with, then one token of the target's own (correction or bonus)
      → take back the rejected columns (KV cache cropped, or masked per row), processors roll back

Exactness. With the greedy selector a draft is kept when it is the token greedy decoding would choose there,
so the output is token for token plain greedy. With the sample selector the rule is Leviathan et al. (2023)
/ Chen et al. (2023): draft ``x`` drawn from ``q`` is kept with probability ``min(1, p(x) / q(x))``,
otherwise the token is drawn from ``max(0, p - q)`` normalised, where ``p`` and ``q`` are the *processed*
target and draft distributions (the same chain, the same prefix); a deterministic drafter is a point mass.
Each position's token then follows the processed target distribution exactly.

Rows accept different numbers of tokens: columns that every row gives up leave the KV cache, the rest stay
as masked holes (:meth:`ModelSession.rewind`), and the chain sees each row's own history, right-aligned.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_serializer, field_validator, model_validator

from decoders.scores import Scores
from decoders.config import SearchConfig
from decoders.errors import DecodersError, GenerationError, StrategyError
from decoders.batch import row_end
from decoders.results import FinishReason, Hypothesis, StepLogprobs
from decoders.searches.base import (
    LogprobBuffer,
    Outcome,
    RowStep,
    Search,
    SearchJob,
    SearchRun,
    chain_step_records,
    dense_scores,
    processed_log_probs,
    step_logprobs,
)
from decoders.selectors import Sample
from decoders.session import ModelSession
from decoders.trace import DraftRecord, SpeculationStats, StepRecord

Schedule = Literal["constant", "heuristic"]


def lookup_draft(history: list[int], ngram_size: int, limit: int) -> list[int]:
    """Prompt lookup: the tokens that followed the earliest earlier occurrence of the history's last n-gram.

    Tries n-grams of ``ngram_size`` tokens down to 1 (the longest that matches wins), as transformers'
    prompt lookup does; returns at most ``limit`` tokens (none when nothing matches).

    Example:
        >>> lookup_draft([1, 2, 3, 4, 1, 2], ngram_size=2, limit=3)
        [3, 4, 1]
    """
    length = len(history)
    for size in range(min(ngram_size, length - 1), 0, -1):
        tail = history[-size:]
        first = tail[0]
        for start in range(length - size):
            if history[start] == first and history[start : start + size] == tail:
                follow = history[start + size : min(start + size + limit, length)]
                if follow:
                    return follow
    return []


def _vocabulary(tokenizer: Any) -> dict[str, int] | None:
    """A tokenizer's token → id map (None when it has none to compare)."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    return get_vocab() if callable(get_vocab) else None


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    """One index drawn from unnormalised non-negative ``weights [V]`` (inverse transform, float64)."""
    cumulative = weights.double().cumsum(0)
    uniform = torch.rand(1, dtype=torch.float64, generator=generator).to(cumulative.device)
    pick = int(torch.searchsorted(cumulative, uniform * cumulative[-1], right=True))
    last_positive = int(torch.searchsorted(cumulative, cumulative[-1], right=False))
    return min(pick, last_positive)


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand(1, dtype=torch.float64, generator=generator))


class _Row:
    """One prompt's sequence: committed tokens, text, score, log-probs, draft statistics."""

    def __init__(self, job: SearchJob, index: int, prompt: list[int], budget: int):
        self.index = index
        self.prompt = prompt
        self.tokens: list[int] = []
        self.text = job.row_text() if job.texts or job.stops else None
        self.reason: FinishReason = "length"
        self.finished = False
        self.score = 0.0
        self.logprobs: list[StepLogprobs] | None = [] if job.logprobs is not None else None
        self.records: list[StepRecord] | None = [] if job.trace else None
        self.drafts: list[DraftRecord] | None = [] if job.trace else None
        self.budget = budget
        self.pause = 0  # steps left without drafting
        self.misses = 0  # verification steps in a row that kept no draft
        self.drafted = self.accepted = self.steps = 0

    def schedule(self, drafted: int, accepted: int, cap: int | None) -> None:
        """The heuristic schedule after a step: transformers' +2 when every draft was kept, −1 otherwise (down to
        1), and a backing-off pause when none was kept: halve the draft length and draft nothing for 1, 2, 4, …
        (at most 16) steps, doubling with each such step in a row (open-ended text rarely repeats the prompt)."""
        if self.pause:
            self.pause -= 1
        if not drafted:
            return
        if accepted == drafted:
            self.budget += 2
        elif accepted:
            self.budget = max(1, self.budget - 1)
        else:
            self.budget = max(1, self.budget // 2)
            self.pause = min(16, 2**self.misses)
        self.misses = 0 if accepted else self.misses + 1
        if cap is not None:
            self.budget = min(self.budget, cap)

    def commit(self, job: SearchJob, token: int, measured: tuple) -> str:
        """Append one token with its ``(log-prob, StepLogprobs, StepRecord)`` measurement; returns the text it made
        visible. Ends the row at EOS, a stop string or the length."""
        log_prob, logprobs, record = measured
        self.score += log_prob
        if self.logprobs is not None:
            self.logprobs.append(logprobs)
        if self.records is not None:
            self.records.append(record.model_copy(update={"step": len(self.tokens), "row": self.index}))
        self.tokens.append(token)
        text = self.text
        if text is not None:
            text.push(token)
        reason = row_end(token, job.eos_token_ids, text, len(self.tokens), job.max_new_tokens)
        if reason is not None:
            self.reason, self.finished = reason, True
        if text is None:
            return ""
        if self.finished and self.reason != "stop":
            text.flush()
        return text.take(final=self.finished)

    def hypothesis(self, job: SearchJob) -> Hypothesis:
        return Hypothesis(
            text=self.text.final_text if self.text is not None else job.decode(self.tokens),
            generated_ids=self.tokens, score=self.score, finish_reason=self.reason, logprobs=self.logprobs,
            speculation=SpeculationStats(
                drafted=self.drafted, accepted=self.accepted, steps=self.steps, records=self.drafts
            ),
        )  # fmt: skip


class SpeculativeSearch(Search):
    """Speculative decoding with prompt lookup or a draft model; the output is what the selector alone gives.

    Args:
        prompt_lookup_num_tokens: draft up to this many tokens by prompt lookup (None: use a draft model).
        max_matching_ngram_size: prompt lookup matches the last n-gram of up to this many tokens.
        assistant_model: the draft model: a name, folder or ``.gguf`` file, a ``LoadedModel``, or a
            ``(model, tokenizer)`` pair; it must share the target's vocabulary.
        num_assistant_tokens: tokens the draft model drafts per step (the starting value of the heuristic).
        num_assistant_tokens_schedule: ``"heuristic"``: a row drafts 2 more tokens after a step that kept
            all its drafts, 1 fewer (at least 1) after one that kept some; after a step that kept none it halves
            its draft length and pauses drafting for 1, 2, 4, … (at most 16) steps. ``"constant"``: the same
            number every step.

    Example:
        >>> strategy = {"search": {"kind": "speculative", "prompt_lookup_num_tokens": 10}}
        >>> result = decoders.generate("Repeat: the cat sat on the mat. Again: the cat", strategy, model=(model, tok))  # doctest: +SKIP
        >>> result.speculation.accepted, result.speculation.drafted  # doctest: +SKIP
        (28, 31)
    """

    requires = ("reorder", "rollback")
    selectors = ("greedy", "sample")
    selectors_reason = "the 'speculative' search verifies drafts for the greedy or the sample selector"

    def __init__(
        self,
        prompt_lookup_num_tokens: int | None = None,
        max_matching_ngram_size: int = 2,
        assistant_model: Any = None,
        num_assistant_tokens: int = 20,
        num_assistant_tokens_schedule: Schedule = "heuristic",
    ):
        if (prompt_lookup_num_tokens is None) == (assistant_model is None):
            raise StrategyError(
                "speculative decoding needs exactly one drafter: prompt_lookup_num_tokens (e.g. 10) or "
                "assistant_model (a draft model sharing the vocabulary)"
            )
        for name, value in (
            ("prompt_lookup_num_tokens", prompt_lookup_num_tokens), ("max_matching_ngram_size", max_matching_ngram_size),
            ("num_assistant_tokens", num_assistant_tokens),
        ):  # fmt: skip
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise StrategyError(f"{name} must be a whole number ≥ 1, got {value!r}")
        if num_assistant_tokens_schedule not in ("constant", "heuristic"):
            raise StrategyError(
                f"num_assistant_tokens_schedule must be 'constant' or 'heuristic', got {num_assistant_tokens_schedule!r}"
            )
        self.prompt_lookup_num_tokens = prompt_lookup_num_tokens
        self.max_matching_ngram_size = max_matching_ngram_size
        self.assistant_model = assistant_model
        self.num_assistant_tokens = num_assistant_tokens
        self.num_assistant_tokens_schedule = num_assistant_tokens_schedule
        self._assistant: Any = None

    # ---- the draft model -------------------------------------------------------------------------------

    def prepare(self, loaded: Any) -> None:
        """Load the draft model (once) and check that it shares the target's vocabulary, before anything runs."""
        if self.assistant_model is None:
            return
        draft = self._draft_loaded()
        from decoders.models import vocab_size_of

        target_size, draft_size = vocab_size_of(loaded.model), vocab_size_of(draft.model)
        target_words, draft_words = _vocabulary(loaded.tokenizer), _vocabulary(draft.tokenizer)
        if target_size and draft_size and target_size != draft_size:
            problem = f"the draft model's vocabulary has {draft_size} entries and the target's {target_size}"
        elif target_words != draft_words:
            problem = (
                f"the draft model's tokenizer has {len(draft_words or ())} tokens and the target's "
                f"{len(target_words or ())}, and they are not the same tokens"
            )
        else:
            return
        raise GenerationError(
            f"{problem}: speculative decoding needs a draft model with the same vocabulary (same tokenizer family), "
            "or prompt lookup (prompt_lookup_num_tokens)"
        )

    def _draft_loaded(self) -> Any:
        """The loaded draft model (loaded once per search)."""
        if self._assistant is None:
            from decoders.models import resolve_model

            try:
                loaded = resolve_model(self.assistant_model)
            except DecodersError as error:
                raise GenerationError(f"assistant_model: {error}") from None
            if not callable(getattr(loaded.model, "forward", None)):
                raise GenerationError(
                    f"assistant_model must be a causal language model with a forward(input_ids, ...) method; got "
                    f"{type(loaded.model).__name__}"
                )
            self._assistant = loaded
        return self._assistant

    def _draft_model(self, job: SearchJob) -> Any:
        """The draft model."""
        return self._draft_loaded().model

    # ---- the loop --------------------------------------------------------------------------------------

    def run(self, job: SearchJob) -> SearchRun:
        session, chain = job.session, job.chain
        sampling = isinstance(chain.selector, Sample)
        generators = list(job.generators) if job.generators is not None else None
        origins = list(job.batch.rows)
        prompts = [session.ids[row, pad:].tolist() for row, pad in enumerate(session.padding)]
        budget = self.prompt_lookup_num_tokens or self.num_assistant_tokens
        rows = [_Row(job, index, prompt, budget) for index, prompt in enumerate(prompts)]
        live = list(range(len(rows)))  # original row of each batch row
        draft = None
        if self.assistant_model is not None:
            draft = ModelSession(self._draft_model(job), prompts, session.pad_id, job.max_new_tokens)
            job.batch.follow(draft)  # the draft model's rows leave with the target's

        # the prompts: the first token is chosen as the single search would
        logits = session.forward().logits
        if draft is not None:
            draft.forward()  # the draft model reads the prompts too
        chosen, texts = self._first_token(job, rows, logits, draft)
        yield [RowStep(origins[i], chosen[i], texts[i], rows[i].finished) for i in live]
        step = 1
        while True:
            live = self._drop_finished(job, rows, live)
            if not live:
                break
            token_ids, texts = self._step(job, rows, live, draft, sampling, generators, step)
            yield [RowStep(origins[i], token_ids[i], texts[i], rows[i].finished) for i in live]
            step += 1
        return [Outcome([row.hypothesis(job)], steps=row.records) for row in rows]

    def _first_token(self, job: SearchJob, rows: list[_Row], logits: torch.Tensor, draft: ModelSession | None):
        """The first token of every row, chosen as the single search would: ``(tokens, texts)``."""
        session, chain = job.session, job.chain
        stages, observer = self._observer(job, logits)
        scores = chain.run(session.ids, logits, observer)
        tokens = chain.choose(scores, job.generators)
        job.batch.append(tokens)
        if draft is not None:
            draft.append(tokens.to(draft.device))
        chosen = tokens.tolist()
        measured = self._measure(job, logits, scores, tokens, list(range(len(rows))), stages)
        texts = [row.commit(job, token, measured[index]) for index, (row, token) in enumerate(zip(rows, chosen))]
        return chosen, texts

    def _drop_finished(self, job: SearchJob, rows: list[_Row], live: list[int]) -> list[int]:
        """Finished rows leave the batch (model session, draft session, chain follow it); returns the live rows."""
        ended = [index for index, row in enumerate(live) if rows[row].finished]
        if ended and len(ended) < len(live):
            job.batch.finish(ended, [rows[live[index]].reason for index in ended])
            job.batch.drop_finished()
        return [row for row in live if not rows[row].finished]

    def _observer(self, job: SearchJob, logits: torch.Tensor):
        if not job.trace:
            return None, None
        stages = [("model", logits)]
        return stages, lambda index, processor, before, after: stages.append((processor.kind, after))

    def _history(self, job: SearchJob, rows: list[_Row], live: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Each live row's prompt and generated tokens, right-aligned ``[R, W]``, and its left padding."""
        sequences = [rows[row].prompt + rows[row].tokens for row in live]
        width = max(map(len, sequences))
        padding = [width - len(sequence) for sequence in sequences]
        ids = torch.full((len(live), width), job.session.pad_id, dtype=torch.long)
        for index, sequence in enumerate(sequences):
            ids[index, padding[index] :] = torch.tensor(sequence, dtype=torch.long)
        return ids.to(job.session.device), padding

    def _step(self, job, rows, live, draft, sampling, generators, step) -> tuple[list, list[str]]:
        session, chain = job.session, job.chain
        batch = len(live)
        history, padding = self._history(job, rows, live)
        chain.set_padding(padding, [len(rows[row].prompt) for row in live])
        row_generators = [generators[row] for row in live] if generators is not None else [None] * batch
        limits = [
            0 if rows[row].pause else min(rows[row].budget, job.max_new_tokens - len(rows[row].tokens) - 1) for row in live
        ]

        # draft
        if draft is None:
            proposals = [
                lookup_draft(rows[row].prompt + rows[row].tokens, self.max_matching_ngram_size, limit) if limit > 0 else []
                for row, limit in zip(live, limits)
            ]
            width = max(map(len, proposals))
            drafts = torch.full((batch, width), session.pad_id, dtype=torch.long)
            for index, proposal in enumerate(proposals):
                drafts[index, : len(proposal)] = torch.tensor(proposal, dtype=torch.long)
            drafts = drafts.to(session.device)
            counts = [len(p) for p in proposals]
            draft_probs = None
        else:
            drafts, draft_probs, counts = self._draft(job, draft, history, limits, sampling, row_generators)
            width = drafts.shape[1]

        # verify: one forward pass over the pending token and the drafts
        if width:
            session.append(drafts)
        logits = session.forward(all_logits=True).logits  # [R, 1 + width, V]
        ids = torch.cat([history, drafts], dim=1)
        stopped = [False] * batch
        accepted = [0] * batch
        own = [0] * batch  # the target's own token of each row
        committed: list[list[tuple[int, tuple]]] = [[] for _ in range(batch)]  # (token, measurement)
        accepts = 0  # positions whose tokens the processors accepted
        for position in range(width + 1):
            step_logits = logits[:, position]
            stages, observer = self._observer(job, step_logits)
            scores = chain.run(ids[:, : history.shape[1] + position], step_logits, observer)
            taking = [not done for done in stopped]  # rows that get a token at this position
            tokens = self._decide(
                chain, scores, drafts, draft_probs, position, counts, stopped, accepted, own, sampling, row_generators
            )
            takers = [index for index, take in enumerate(taking) if take]
            measured = self._measure(job, step_logits, scores, tokens, takers, stages)
            for index in takers:
                committed[index].append((int(tokens[index]), measured[index]))
            job.batch.accept(tokens.to(session.device))  # rows that stopped before take theirs back below
            accepts += 1
            if all(stopped):
                break

        job.batch.rewind([accepts - len(committed[index]) for index in range(batch)])
        corrections = torch.tensor(own, dtype=torch.long, device=session.device)
        session.rewind([width - accepted[index] for index in range(batch)])
        session.append(corrections)
        if draft is not None:
            draft.rewind([width - accepted[index] for index in range(batch)])
            draft.append(corrections.to(draft.device))

        token_ids: list[int | None] = [None] * len(rows)
        texts = [""] * len(rows)
        for index, row_index in enumerate(live):
            row = rows[row_index]
            row.steps += 1
            row.drafted += counts[index]
            row.accepted += accepted[index]
            if row.drafts is not None:
                row.drafts.append(
                    DraftRecord(
                        step=step, row=row_index, position=len(row.tokens), drafted=drafts[index, : counts[index]].tolist(),
                        drafted_text=[job.token_text(t) for t in drafts[index, : counts[index]].tolist()],
                        accepted=accepted[index], token=own[index], token_text=job.token_text(own[index]),
                    )  # fmt: skip
                )
            if self.num_assistant_tokens_schedule == "heuristic":
                row.schedule(counts[index], accepted[index], self.prompt_lookup_num_tokens)
            for token, measurement in committed[index]:
                texts[row_index] += row.commit(job, token, measurement)
                token_ids[row_index] = token
                if row.finished:
                    break
        return token_ids, texts

    def _draft(self, job, draft: ModelSession, history, limits, sampling, row_generators):
        """Run the draft model ``max(limits)`` times: drafts ``[R, D]``, their processed distributions (sampling)."""
        chain = job.chain
        batch, width = len(limits), max(limits)
        drafts = torch.full((batch, width), job.session.pad_id, dtype=torch.long, device=job.session.device)
        probs: list[torch.Tensor] = []
        for position in range(width):
            logits = draft.forward().logits.to(job.session.device)
            scores = chain.run(torch.cat([history, drafts[:, :position]], dim=1), logits)
            if sampling:
                p = torch.softmax(dense_scores(scores).float(), dim=-1)
                probs.append(p)
                tokens = [
                    _draw(p[index], row_generators[index]) if position < limits[index] else job.session.pad_id
                    for index in range(batch)
                ]
                tokens = torch.tensor(tokens, dtype=torch.long, device=drafts.device)
            else:
                tokens = chain.choose(scores)
            drafts[:, position] = tokens
            job.batch.accept(tokens)
            draft.append(tokens.to(draft.device))  # the model sees it at the next position (the last: next step)
        job.batch.rewind([width] * batch)
        counts = [max(limit, 0) for limit in limits]
        return drafts, (torch.stack(probs, dim=1) if sampling and probs else None), counts

    def _decide(self, chain, scores: Scores, drafts, draft_probs, position, counts, stopped, accepted, own, sampling, gens):
        """Position ``position`` of every row still going: keep its draft, or stop with the target's own token.

        Returns the token each row has at this position (the draft, or its own token where it stops here).
        """
        batch = len(counts)
        if not sampling:
            choice = chain.choose(scores).tolist()
        else:
            probs = torch.softmax(dense_scores(scores).float(), dim=-1)
        tokens = drafts[:, position].tolist() if position < drafts.shape[1] else [0] * batch
        for index in range(batch):
            if stopped[index]:
                continue
            if position < counts[index]:
                proposal = tokens[index]
                if not sampling:
                    keep = choice[index] == proposal
                else:
                    p = float(probs[index, proposal])
                    q = 1.0 if draft_probs is None else float(draft_probs[index, position, proposal])
                    keep = _uniform(gens[index]) * q < p
                if keep:
                    accepted[index] += 1
                    continue
                if not sampling:
                    token = choice[index]
                else:
                    if draft_probs is None:
                        residual = probs[index].clone()
                        residual[proposal] = 0.0
                    else:
                        residual = (probs[index] - draft_probs[index, position]).clamp(min=0.0)
                    token = _draw(residual, gens[index])
            else:  # every draft kept: the bonus token
                token = choice[index] if not sampling else _draw(probs[index], gens[index])
            stopped[index], own[index], tokens[index] = True, token, token
        return torch.tensor(tokens, dtype=torch.long)

    def _measure(self, job, logits, scores, tokens, takers, stages) -> dict[int, tuple]:
        """For the rows ``takers`` that take ``tokens`` at this position: ``(log-prob, StepLogprobs, StepRecord)``."""
        tokens = tokens.to(logits.device)
        if job.logprobs is not None:
            measured = LogprobBuffer.measure(logits, scores, tokens, job.logprobs)
            chosen = measured[2][:, 0].tolist()
            ids, raw, processed = (t.tolist() for t in measured)
        else:
            chosen = processed_log_probs(scores, tokens.unsqueeze(-1)).squeeze(-1).tolist()
        records = {}
        if job.trace and stages is not None:
            records = {r.row: r for r in chain_step_records(job, 0, scores, stages, tokens, takers)}
        return {
            index: (
                chosen[index],
                None if job.logprobs is None else step_logprobs(ids[index], raw[index], processed[index], job),
                records.get(index),
            )
            for index in takers
        }


class SpeculativeConfig(SearchConfig):
    """Speculative decoding (prompt lookup or a draft model): faster, with exactly the selector's output."""

    kind: Literal["speculative"] = "speculative"
    prompt_lookup_num_tokens: int | None = Field(
        default=None, ge=1, description="prompt lookup: draft up to this many tokens that followed an earlier match"
    )
    max_matching_ngram_size: int = Field(default=2, ge=1, description="prompt lookup: longest n-gram matched")
    assistant_model: Any = Field(
        default=None, description="draft model: a name, folder or .gguf file sharing the target's vocabulary"
    )
    num_assistant_tokens: int = Field(default=20, ge=1, description="draft model: tokens drafted per step (start)")
    num_assistant_tokens_schedule: Schedule = Field(
        default="heuristic", description="heuristic: +2 after a step that kept every draft, -1 otherwise; or constant"
    )

    @field_validator("assistant_model")
    @classmethod
    def _model_reference(cls, value: Any) -> Any:
        if value is None or isinstance(value, str) and value:
            return value
        if isinstance(value, tuple) and len(value) == 2 or hasattr(value, "model") and hasattr(value, "tokenizer"):
            return value
        raise ValueError(
            f"assistant_model must be a model name, folder or .gguf file, a LoadedModel or a (model, tokenizer) "
            f"pair; got {type(value).__name__}"
        )

    @field_serializer("assistant_model")
    def _model_name(self, value: Any) -> str | None:
        """A loaded draft model is written as its name (a config file can only name a model)."""
        if value is None or isinstance(value, str):
            return value
        model = value[0] if isinstance(value, tuple) else value.model
        return getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__

    @model_validator(mode="after")
    def _one_drafter(self) -> SpeculativeConfig:
        if (self.prompt_lookup_num_tokens is None) == (self.assistant_model is None):
            raise ValueError(
                "give exactly one drafter: prompt_lookup_num_tokens (e.g. 10) or assistant_model (a draft model "
                "sharing the vocabulary)"
            )
        return self

    def build(self) -> SpeculativeSearch:
        return SpeculativeSearch(
            self.prompt_lookup_num_tokens, self.max_matching_ngram_size, self.assistant_model,
            self.num_assistant_tokens, self.num_assistant_tokens_schedule,
        )  # fmt: skip
