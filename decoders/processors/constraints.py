"""Hard constraints and biases: minimum new tokens (EOS suppression), logit bias, bad words."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from decoders.processors.base import NEG_INF, Processor, check_parameter, is_count



def _check_ids(what: str, ids: torch.Tensor, vocab_size: int) -> None:
    if ids.numel() and int(ids.max()) >= vocab_size:
        raise ValueError(
            f"{what} names token id {int(ids.max())}, outside the model's vocabulary of {vocab_size} tokens; "
            "use ids from this model's tokenizer"
        )


class MinNewTokens(Processor):
    """Forbid the end-of-sequence tokens until ``min_new_tokens`` tokens have been generated.

    Args:
        min_new_tokens: how many tokens must be generated before EOS is allowed.
        eos_token_id: EOS id(s); when None, the model's EOS ids from the generation context are used.

    Example:
        >>> p = MinNewTokens(2, eos_token_id=0)
        >>> p.process(torch.tensor([[5]]), torch.zeros(1, 3))
        tensor([[-inf, 0., 0.]])
    """

    supports_candidates = True

    def __init__(self, min_new_tokens: int, eos_token_id: int | list[int] | None = None):
        check_parameter(is_count(min_new_tokens, 0), "min_new_tokens", min_new_tokens, "an integer ≥ 0")
        if eos_token_id is None:
            eos = None
        else:
            eos = list(eos_token_id) if isinstance(eos_token_id, list | tuple) else [eos_token_id]
        check_parameter(
            eos is None or (len(eos) > 0 and all(is_count(i, 0) for i in eos)), "eos_token_id", eos_token_id,
            "a token id ≥ 0, a non-empty list of them, or None", "None uses the model's end-of-sequence ids",
        )  # fmt: skip
        self.min_new_tokens = int(min_new_tokens)
        self.eos_token_id = None if eos is None else [int(i) for i in eos]

    def _eos_ids(self) -> list[int]:
        eos = self.eos_token_id if self.eos_token_id is not None else list(self.context.eos_token_ids)
        if not eos:
            raise ValueError(
                "min_new_tokens needs the end-of-sequence token ids: set eos_token_id in its config, "
                "or generate with a model whose tokenizer defines an EOS token"
            )
        return eos

    def _active(self, input_ids: torch.Tensor) -> bool | torch.Tensor:
        """Whether EOS is still banned: one bool for all rows, or ``[B, 1]`` when rows have different lengths."""
        active = input_ids.shape[-1] - self.context.generated_start(input_ids) < self.min_new_tokens
        return active.unsqueeze(-1) if isinstance(active, torch.Tensor) else active

    def process(self, input_ids, logits):
        active = self._active(input_ids)
        if active is False:
            return logits.clone()
        eos = torch.tensor(self._eos_ids(), device=logits.device)
        _check_ids("min_new_tokens eos_token_id", eos, logits.shape[-1])
        mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        mask[eos] = True
        return logits.masked_fill(mask & active, NEG_INF)

    def process_candidates(self, input_ids, candidates):
        active = self._active(input_ids)
        if active is False:
            return candidates
        eos = torch.tensor(self._eos_ids(), device=candidates.ids.device)
        _check_ids("min_new_tokens eos_token_id", eos, candidates.vocab_size)
        return candidates.with_values(candidates.values.masked_fill(torch.isin(candidates.ids, eos) & active, NEG_INF))


class LogitBias(Processor):
    """Add a fixed bias to chosen tokens' logits (OpenAI ``logit_bias``).

    Args:
        logit_bias: ``{token_id: bias}``; ``-inf`` bans a token.

    Example:
        >>> LogitBias({1: 2.0}).process(None, torch.zeros(1, 3))
        tensor([[0., 2., 0.]])
    """

    supports_candidates = True

    def __init__(self, logit_bias: dict[int, float]):
        check_parameter(len(logit_bias) > 0, "logit_bias", logit_bias, "a non-empty {token_id: bias} mapping")
        for token, bias in logit_bias.items():
            check_parameter(is_count(token, 0), "a logit_bias token id", token, "an integer ≥ 0")
            check_parameter(
                not math.isnan(bias) and bias != math.inf, f"the bias of token {token}", bias, "a finite number or -inf",
                "-inf bans the token",
            )  # fmt: skip
        self.logit_bias = {int(k): float(v) for k, v in logit_bias.items()}
        self._ids = torch.tensor(list(self.logit_bias), dtype=torch.long)
        self._biases = torch.tensor(list(self.logit_bias.values()), dtype=torch.float32)

    def process(self, input_ids, logits):
        _check_ids("logit_bias", self._ids, logits.shape[-1])
        biases = self._biases.to(device=logits.device, dtype=logits.dtype).expand(logits.shape[0], -1)
        return logits.index_add(1, self._ids.to(logits.device), biases)

    def process_candidates(self, input_ids, candidates):
        _check_ids("logit_bias", self._ids, candidates.vocab_size)
        ids = self._ids.to(candidates.ids.device)
        hits = candidates.ids.unsqueeze(-1) == ids
        # one non-zero term per hit (the ids are distinct); where, not a product, since 0 · -inf is NaN
        bias = torch.where(hits, self._biases.to(candidates.values), 0).sum(dim=-1)
        return candidates.with_values(torch.where(hits.any(dim=-1), candidates.values + bias, candidates.values))


class BadWords(Processor):
    """Forbid token sequences: the last token of a sequence is removed when the rest was just generated.

    Args:
        bad_words_ids: a list of token-id sequences; a one-token sequence is always forbidden.

    Example:
        >>> BadWords([[2], [0, 1]]).process(torch.tensor([[0]]), torch.zeros(1, 3))
        tensor([[0., -inf, -inf]])
    """

    supports_candidates = True

    def __init__(self, bad_words_ids: list[list[int]]):
        check_parameter(
            len(bad_words_ids) > 0 and all(len(seq) > 0 for seq in bad_words_ids), "bad_words_ids", bad_words_ids,
            "a non-empty list of non-empty token-id sequences",
        )  # fmt: skip
        check_parameter(
            all(is_count(i, 0) for seq in bad_words_ids for i in seq), "bad_words_ids", bad_words_ids, "token ids ≥ 0"
        )
        self.bad_words_ids = [list(map(int, seq)) for seq in bad_words_ids]
        by_length: dict[int, list[list[int]]] = defaultdict(list)
        for seq in self.bad_words_ids:
            by_length[len(seq)].append(seq)
        self._groups = [
            (torch.tensor([s[:-1] for s in seqs]), torch.tensor([s[-1] for s in seqs])) for _, seqs in sorted(by_length.items())
        ]

    def _banned(self, input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """``[B, N]`` banned ids (``vocab_size`` where a sequence's prefix does not match)."""
        rows = input_ids.shape[0]
        banned = []
        for prefixes, last in self._groups:
            _check_ids("bad_words", last, vocab_size)
            length = prefixes.shape[1]
            if length > input_ids.shape[1]:
                continue
            if length == 0:
                match = torch.ones(rows, last.shape[0], dtype=torch.bool, device=input_ids.device)
            else:
                tail = input_ids[:, None, input_ids.shape[1] - length :]
                match = (tail == prefixes.to(input_ids.device)).all(dim=-1)
            banned.append(torch.where(match, last.to(input_ids.device), vocab_size))
        if not banned:
            return input_ids.new_full((rows, 1), vocab_size)
        return torch.cat(banned, dim=1)

    def process(self, input_ids, logits):
        vocab_size = logits.shape[-1]
        mask = logits.new_zeros((logits.shape[0], vocab_size + 1), dtype=torch.bool)
        mask.scatter_(1, self._banned(input_ids, vocab_size), True)
        return logits.masked_fill(mask[:, :vocab_size], NEG_INF)

    def process_candidates(self, input_ids, candidates):
        banned = self._banned(input_ids, candidates.vocab_size)
        hit = (candidates.ids.unsqueeze(-1) == banned.unsqueeze(1)).any(dim=-1)
        return candidates.with_values(candidates.values.masked_fill(hit, NEG_INF))
