"""The default search: one hypothesis per prompt, one token per step, chosen by the chain's selector.

    prefill → per step: chain.run → chain.choose → append → accept → forward the new token

With the ``greedy`` selector it is greedy decoding, with ``sample`` ancestral sampling.
"""

from __future__ import annotations

from typing import Literal

import torch

from decoders.config import SearchConfig
from decoders.results import FinishReason, Hypothesis, StepEvent
from decoders.searches.base import LogprobBuffer, Outcome, Search, SearchJob, SearchRun, processed_log_probs
from decoders.trace import StepRecord, step_records


class SingleSearch(Search):
    """One hypothesis per prompt: at every step the selector picks the next token of each live row.

    A row ends at an end-of-sequence token, a stop string, or ``max_new_tokens``. Its score is the summed
    log-probability of its tokens under the processed distribution.

    Example:
        >>> decoders.generate("Hi", {"search": {"kind": "single"}}, model=(model, tokenizer)).score  # doctest: +SKIP
        -12.7
    """

    kind = "single"

    def run(self, job: SearchJob) -> SearchRun:
        session, chain = job.session, job.chain
        rows = session.rows
        finished = [False] * rows
        finished_mask = torch.zeros(rows, dtype=torch.bool, device=session.device)
        reasons: list[FinishReason] = ["length"] * rows
        counts = [0] * rows
        scores_sum = torch.zeros(rows, dtype=torch.float64, device=session.device)
        texts = [job.row_text() for _ in range(rows)] if job.texts or job.stops else None
        records: list[list[StepRecord]] | None = [[] for _ in range(rows)] if job.trace else None
        logprobs = (
            LogprobBuffer(rows, job.max_new_tokens, job.logprobs, session.device) if job.logprobs is not None else None
        )
        for step in range(job.max_new_tokens):
            logits = session.forward().logits
            stages = [("model", logits)] if job.trace else None
            observer = (
                (lambda index, processor, before, after, _stages=stages: _stages.append((processor.kind, after)))
                if stages
                else None
            )
            scores = chain.run(session.ids, logits, observer)
            tokens = chain.choose(scores, job.generators)
            if any(finished):
                tokens = tokens.masked_fill(finished_mask, session.pad_id)
            session.append(tokens)
            chain.accept(tokens)
            chosen_log_probs = processed_log_probs(scores, tokens.unsqueeze(-1)).squeeze(-1)
            scores_sum += chosen_log_probs.double().masked_fill(finished_mask, 0.0)
            if logprobs is not None:
                logprobs.write(step, *LogprobBuffer.measure(logits, scores, tokens, logprobs.n))

            active = [row for row, done in enumerate(finished) if not done]
            step_trace: list[StepRecord | None] | None = None
            if records is not None:
                step_trace = [None] * rows
                for record in step_records(step, stages, tokens, job.tokenizer, rows=active, top=job.top):
                    step_trace[record.row] = record
                    records[record.row].append(record)
            token_ids: list[int | None] = [None] * rows
            new_texts = [""] * rows
            chosen = tokens.tolist()
            last_step = step == job.max_new_tokens - 1
            for row in active:
                token_ids[row] = token = chosen[row]
                counts[row] += 1
                text = texts[row] if texts else None
                if text is not None:
                    text.push(token)
                reason: FinishReason | None = None
                if token in job.eos_token_ids:
                    reason = "eos"
                elif text is not None and text.stop_at is not None:
                    reason = "stop"
                elif last_step:
                    reason = "length"
                if reason is not None:
                    finished[row], finished_mask[row], reasons[row] = True, True, reason
                    if text is not None and reason != "stop":
                        text.flush()
                if text is not None:
                    new_texts[row] = text.take(final=finished[row])
            yield StepEvent(step, token_ids, new_texts, list(finished), step_trace)
            if all(finished):
                break
        start = session.prompt_width
        generated = [session.ids[row, start : start + count].tolist() for row, count in enumerate(counts)]
        final_texts = [t.final_text for t in texts] if texts else [job.decode(ids) for ids in generated]
        totals = scores_sum.tolist()
        return [
            Outcome(
                [
                    Hypothesis(
                        text=final_texts[row],
                        generated_ids=generated[row],
                        score=totals[row],
                        finish_reason=reasons[row],
                        logprobs=None if logprobs is None else logprobs.records(row, counts[row], job),
                    )
                ],
                steps=None if records is None else records[row],
            )
            for row in range(rows)
        ]


class SingleConfig(SearchConfig):
    """One hypothesis per prompt; the selector picks each token (greedy or sampling)."""

    kind: Literal["single"] = "single"

    def build(self) -> SingleSearch:
        return SingleSearch()
