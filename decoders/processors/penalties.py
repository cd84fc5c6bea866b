"""Penalties on tokens already seen: repetition, presence/frequency, and no-repeat n-grams."""

from __future__ import annotations

import torch

from decoders.processors.base import NEG_INF, Processor, check_parameter, is_count, is_real



def _membership(candidate_ids: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
    """``[B, k]`` count of how often each candidate id occurs in its row of ``sequence [B, T]``."""
    if sequence.shape[-1] == 0:
        return torch.zeros_like(candidate_ids)
    return (candidate_ids.unsqueeze(-1) == sequence.unsqueeze(1)).sum(dim=-1)


class RepetitionPenalty(Processor):
    """Penalise every token already in the sequence, prompt included (CTRL's repetition penalty).

    A seen token's logit is multiplied by ``repetition_penalty`` when negative and divided by it otherwise.
    Left padding of a batch is not text and is not counted (as in transformers' ``generate``).

    Args:
        repetition_penalty: > 0; above 1 discourages repetition, below 1 encourages it.

    Example:
        >>> RepetitionPenalty(2.0).process(torch.tensor([[0, 1]]), torch.tensor([[2.0, -2.0, 2.0]]))
        tensor([[ 1., -4.,  2.]])
    """

    supports_candidates = True

    def __init__(self, repetition_penalty: float):
        check_parameter(
            is_real(repetition_penalty) and repetition_penalty > 0, "repetition_penalty", repetition_penalty,
            "a finite number > 0", "1 is no penalty, above 1 discourages repetition",
        )  # fmt: skip
        self.repetition_penalty = float(repetition_penalty)

    def _penalise(self, values: torch.Tensor) -> torch.Tensor:
        return torch.where(values < 0, values * self.repetition_penalty, values / self.repetition_penalty)

    def process(self, input_ids, logits):
        if input_ids.shape[-1] == 0:
            return logits.clone()
        # ids the model cannot output (an embedding table larger than the output layer) go to a spare column
        vocab_size = logits.shape[-1]
        ids = self.context.text_ids(input_ids, vocab_size).clamp(max=vocab_size)
        padded = torch.nn.functional.pad(logits, (0, 1))
        seen = padded.gather(1, ids)
        return padded.scatter(1, ids, self._penalise(seen))[:, :vocab_size]

    def process_candidates(self, input_ids, candidates):
        seen = _membership(candidates.ids, self.context.text_ids(input_ids, -1)) > 0
        values = torch.where(seen, self._penalise(candidates.values), candidates.values)
        return candidates.with_values(values)


class PresenceFrequency(Processor):
    """OpenAI/llama.cpp presence and frequency penalties over the generated tokens.

    ``logit -= count * frequency_penalty + (count > 0) * presence_penalty``, where ``count`` is how often the
    token occurs among the generated tokens (the last ``penalty_last_n`` of them, if set). The prompt is not
    counted.

    Args:
        presence_penalty: subtracted once from every token that occurred.
        frequency_penalty: subtracted once per occurrence.
        penalty_last_n: only count the last this many generated tokens (all when None).

    Example:
        >>> p = PresenceFrequency(presence_penalty=1.0, frequency_penalty=0.5)
        >>> p.process(torch.tensor([[2, 2]]), torch.zeros(1, 3))
        tensor([[ 0.,  0., -2.]])
    """

    supports_candidates = True

    def __init__(self, presence_penalty: float = 0.0, frequency_penalty: float = 0.0, penalty_last_n: int | None = None):
        check_parameter(is_real(presence_penalty), "presence_penalty", presence_penalty, "a finite number")
        check_parameter(is_real(frequency_penalty), "frequency_penalty", frequency_penalty, "a finite number")
        check_parameter(
            penalty_last_n is None or is_count(penalty_last_n, 1), "penalty_last_n", penalty_last_n,
            "None or an integer ≥ 1", "None counts every generated token",
        )  # fmt: skip
        self.presence_penalty = float(presence_penalty)
        self.frequency_penalty = float(frequency_penalty)
        self.penalty_last_n = penalty_last_n

    def _generated(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The generated columns (the last ``penalty_last_n``); where rows differ in length, the columns of a
        row's prompt are replaced by an id no token has (``-1`` → not counted)."""
        start = self.context.generated_start(input_ids)
        if isinstance(start, torch.Tensor):
            first = int(start.min())
            columns = torch.arange(first, input_ids.shape[-1], device=input_ids.device)
            generated = input_ids[:, first:].masked_fill(columns < start.unsqueeze(-1), -1)
        else:
            generated = input_ids[:, start:]
        if self.penalty_last_n is not None:
            generated = generated[:, -self.penalty_last_n :]
        return generated

    def _penalty(self, counts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        counts = counts.to(dtype)
        return counts * self.frequency_penalty + (counts > 0).to(dtype) * self.presence_penalty

    def process(self, input_ids, logits):
        generated = self._generated(input_ids)
        vocab_size = logits.shape[-1]
        counts = logits.new_zeros((logits.shape[0], vocab_size + 1), dtype=torch.int64)  # + a spare column, as above
        spare = generated.masked_fill(generated < 0, vocab_size).clamp(max=vocab_size)
        counts = counts.scatter_add(1, spare, torch.ones_like(generated))[:, :vocab_size]
        return logits - self._penalty(counts, logits.dtype)

    def process_candidates(self, input_ids, candidates):
        counts = _membership(candidates.ids, self._generated(input_ids))
        return candidates.with_values(candidates.values - self._penalty(counts, candidates.values.dtype))


class NoRepeatNGram(Processor):
    """Forbid any token that would complete an n-gram already present in the sequence.

    Args:
        no_repeat_ngram_size: n ≥ 1 (1 forbids every token already in the sequence).

    Example:
        >>> NoRepeatNGram(2).process(torch.tensor([[0, 1, 0]]), torch.zeros(1, 3))
        tensor([[0., -inf, 0.]])
    """

    supports_candidates = True

    def __init__(self, no_repeat_ngram_size: int):
        check_parameter(
            is_count(no_repeat_ngram_size, 1), "no_repeat_ngram_size", no_repeat_ngram_size, "an integer ≥ 1",
            "to allow every repetition, leave no_repeat_ngram out",
        )  # fmt: skip
        self.no_repeat_ngram_size = int(no_repeat_ngram_size)

    def _banned(self, input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """``[B, W]`` banned token ids per row; ``vocab_size`` marks "nothing banned" in a slot."""
        n = self.no_repeat_ngram_size
        length = input_ids.shape[-1]
        windows = input_ids.unfold(dimension=1, size=n, step=1)
        prefix = input_ids[:, length + 1 - n :]
        matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
        return torch.where(matches, windows[..., -1].clamp(max=vocab_size), vocab_size)

    def process(self, input_ids, logits):
        if input_ids.shape[-1] < self.no_repeat_ngram_size:
            return logits.clone()
        vocab_size = logits.shape[-1]
        mask = logits.new_zeros((logits.shape[0], vocab_size + 1), dtype=torch.bool)
        mask.scatter_(1, self._banned(input_ids, vocab_size), True)
        return logits.masked_fill(mask[:, :vocab_size], NEG_INF)

    def process_candidates(self, input_ids, candidates):
        if input_ids.shape[-1] < self.no_repeat_ngram_size:
            return candidates
        banned = _membership(candidates.ids, self._banned(input_ids, candidates.vocab_size)) > 0
        return candidates.with_values(candidates.values.masked_fill(banned, NEG_INF))


__all__ = ["RepetitionPenalty", "PresenceFrequency", "NoRepeatNGram"]
