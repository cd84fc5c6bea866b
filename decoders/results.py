"""What generation returns: results, ranked hypotheses, per-token log-probabilities, and stream events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, computed_field

from decoders.errors import GenerationError
from decoders.trace import BeamStepRecord, SpeculationStats, StepRecord

FinishReason = Literal["eos", "length", "stop"]


class TokenLogprob(BaseModel):
    """One token's log-probability under the model and under the processed distribution.

    Args:
        token_id: the token id.
        token: the decoded text of that single id.
        raw: log-probability under the model's own distribution (softmax of its logits).
        processed: log-probability under the distribution the chain made (softmax of the processed scores);
            None when the chain removed the token.
    """

    token_id: int
    token: str
    raw: float
    processed: float | None


class StepLogprobs(BaseModel):
    """The log-probabilities of one generated token, and the most likely alternatives at that step.

    Args:
        chosen: the generated token.
        top: the ``logprobs`` most likely tokens under the model's own distribution (as vLLM's default
            ``logprobs``), most likely first, each with its processed log-probability too.
    """

    chosen: TokenLogprob
    top: list[TokenLogprob]


class Hypothesis(BaseModel):
    """One finished sequence of a search, as ranked among a prompt's alternatives.

    Args:
        text: the generated continuation, decoded without special tokens (cut before a stop string).
        generated_ids: the generated token ids (an EOS id included when the model wrote one).
        score: the search's score of this sequence (see :attr:`GenerationResult.score`).
        finish_reason: ``"eos"``, ``"stop"`` or ``"length"``.
        logprobs: per generated token, when ``generate(..., logprobs=n)`` asked for them.
        weight: for a sample drawn without replacement (stochastic beam search), its estimator weight
            p(y) / q(y): the average of ``weight · f(y)`` over the samples estimates the expectation of f.
        speculation: drafted and accepted token counts (and the draft steps when tracing), for speculative
            decoding; else None.
    """

    text: str
    generated_ids: list[int]
    score: float
    finish_reason: FinishReason
    logprobs: list[StepLogprobs] | None = None
    weight: float | None = None
    speculation: SpeculationStats | None = None


class GenerationResult(BaseModel):
    """What the model wrote for one prompt: the best hypothesis of the search, and the ranked alternatives.

    Args:
        prompt: the prompt as given (before any chat template).
        text: the generated continuation only, decoded without special tokens; cut before a stop string.
        prompt_ids: the prompt's token ids (chat template and the tokenizer's special tokens included).
        generated_ids: every generated token id, the EOS id included when the model wrote one, and the
            tokens of a stop string included (only ``text`` is cut).
        finish_reason: ``"eos"`` (the model wrote an end-of-sequence token), ``"stop"`` (a stop string
            appeared), or ``"length"`` (``max_new_tokens`` reached).
        score: the sequence's score. The single search: the summed log-probability of the chosen tokens under
            the processed distribution. Beam search: transformers' ``sequences_scores``, the summed processed
            log-probabilities divided by ``length ** length_penalty``.
        alternatives: the ranked hypotheses (``num_return_sequences`` of them for beam search);
            ``alternatives[0]`` is this result itself.
        logprobs: per generated token, its raw and processed log-probability and the top alternatives, when
            ``generate(..., logprobs=n)`` asked for them; else None.
        steps: one :class:`StepRecord` per generated token when tracing the single search, else None.
        beam_steps: one :class:`BeamStepRecord` per step when tracing beam search, else None.
        speculation: speculative decoding's drafted and accepted token counts (and per-step records when
            tracing); None for other searches.

    Example:
        >>> result = decoders.generate(["Hi", "Hello"], model=(model, tokenizer))[1]  # doctest: +SKIP
        >>> result.finish_reason, len(result.generated_ids), result.score < 0  # doctest: +SKIP
        ('length', 64, True)
    """

    prompt: str
    text: str
    prompt_ids: list[int]
    generated_ids: list[int]
    finish_reason: FinishReason
    score: float
    alternatives: list[Hypothesis]
    logprobs: list[StepLogprobs] | None = None
    steps: list[StepRecord] | None = None
    beam_steps: list[BeamStepRecord] | None = None

    @computed_field
    @property
    def speculation(self) -> SpeculationStats | None:
        return self.alternatives[0].speculation if self.alternatives else None


class Generations(list):
    """The results of one :func:`generate` call, one :class:`GenerationResult` per prompt, in order.

    ``text``, ``generated_ids``, ``prompt_ids``, ``finish_reason``, ``score``, ``alternatives``, ``logprobs`` and
    ``speculation`` read the only
    result when there is exactly one, so ``generate("Hi").text`` works; with several, index first:
    ``generate(["a", "b"])[1].text``.

    Example:
        >>> results = decoders.generate(["Once", "The"], model=(model, tokenizer), max_new_tokens=4)  # doctest: +SKIP
        >>> [r.finish_reason for r in results], results[1].prompt  # doctest: +SKIP
        (['length', 'length'], 'The')
    """

    def _only(self, field: str) -> GenerationResult:
        if len(self) != 1:
            raise GenerationError(
                f"these generations hold {len(self)} results, so .{field} is ambiguous: "
                f"index one first, e.g. results[0].{field}, or use [r.{field} for r in results]"
            )
        return self[0]

    @property
    def text(self) -> str:
        return self._only("text").text

    @property
    def generated_ids(self) -> list[int]:
        return self._only("generated_ids").generated_ids

    @property
    def prompt_ids(self) -> list[int]:
        return self._only("prompt_ids").prompt_ids

    @property
    def finish_reason(self) -> FinishReason:
        return self._only("finish_reason").finish_reason

    @property
    def score(self) -> float:
        return self._only("score").score

    @property
    def alternatives(self) -> list[Hypothesis]:
        return self._only("alternatives").alternatives

    @property
    def logprobs(self) -> list[StepLogprobs] | None:
        return self._only("logprobs").logprobs

    @property
    def speculation(self) -> SpeculationStats | None:
        return self._only("speculation").speculation


@dataclass(frozen=True)
class StepEvent:
    """One generation step of the whole batch, as :func:`stream` yields it; the last event holds the results.

    The final event comes after the last step (also when ``max_new_tokens`` is 0): its ``results`` is the
    :class:`Generations`, its ``step`` the number of steps run, ``token_ids`` all None, ``texts`` all empty
    and ``finished`` all True. Every other event has ``results`` None.

    Args:
        step: index of the generated token (0 for the first new token); with speculative decoding, of the
            verification step, which may add several tokens per row.
        token_ids: the token chosen for each row (speculative decoding: the last of the step's tokens), None for
            rows that had already finished.
        texts: the text each row's new token made decodable (``""`` when nothing new, e.g. half of a
            multi-byte character, or text held back because it may be the start of a stop string). A row's
            texts, concatenated over all events, equal its final ``text``.
        finished: whether each row has finished (at this step or before).
        records: per row, that step's :class:`StepRecord` when tracing (None for finished rows); None when
            tracing is off.
        results: the :class:`Generations`, on the final event only.

    Example:
        >>> for event in decoders.stream("Once upon a time", "balanced", seed=0):  # doctest: +SKIP
        ...     print(event.texts[0], end="", flush=True)
        ...     if event.results is not None:
        ...         print(" →", event.results.finish_reason)
    """

    step: int
    token_ids: list[int | None]
    texts: list[str]
    finished: list[bool]
    records: list[StepRecord | None] | None = None
    results: Generations | None = None
