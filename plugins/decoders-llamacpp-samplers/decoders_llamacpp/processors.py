"""The llama.cpp sampler family as ``decoders`` processors: XTC, DRY, dynamic temperature, mirostat v2.

Every processor here works on dense rows ``[B, V]`` and on candidate sets ``[B, k]``, with the same result.
Rules that look at probabilities (XTC, dynatemp, mirostat) compute them in float64 and add up a row's
weights with a running sum in token-id order: a token outside a candidate set weighs exactly zero and adding
zero changes no running sum, so the dense row and the candidate set give bit-for-bit the same probabilities
(the same trick as ``decoders``' ``sample`` selector).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import torch

import decoders
from decoders import check_parameter as check
from decoders import is_count, is_real

NEG_INF = decoders.NEG_INF
LN2 = math.log(2.0)
#: log of the largest float32: DRY clamps ``base ** exponent`` below it, as llama.cpp does
FLOAT_MAX_LOG = 88.7228391


class SequenceBreakerError(decoders.DecodersError, ValueError):
    """A DRY sequence breaker cannot be used with this model (no tokenizer, or no tokens)."""


# ---- exact row statistics ---------------------------------------------------------------------------


def _id_order_total(x: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    """Row sums ``[B, 1]`` of ``x`` (float64) added one by one in token-id order."""
    if ids is not None:
        x = x.gather(1, torch.argsort(ids, dim=-1, stable=True))
    return x.cumsum(dim=-1)[:, -1:]


def log_probs(values: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """float64 log-softmax of each row over its finite values (``-inf`` where removed).

    ``ids`` are the token ids of the columns (a candidate set), None for a dense row; the normaliser is summed
    in token-id order either way, so a candidate set and its dense row give identical results.
    """
    v = values.double()
    shifted = v - v.amax(dim=-1, keepdim=True)
    return shifted - _id_order_total(shifted.exp(), ids).log()


def entropy(lp: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Shannon entropy (nats) ``[B, 1]`` of rows given as float64 log-probabilities (``-inf`` weighs 0)."""
    terms = torch.where(torch.isfinite(lp), lp.exp() * lp, torch.zeros_like(lp))
    return -_id_order_total(terms, ids)


class _RowRule(decoders.Processor):
    """A rule that sees a row's values (and, on a candidate set, their ids): same code for both paths."""

    supports_candidates = True
    #: whether the rule keeps the descending order of a sorted candidate set
    keeps_order = False

    def apply(self, input_ids: torch.LongTensor | None, values: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def process(self, input_ids, logits):
        return self.apply(input_ids, logits, None)

    def process_candidates(self, input_ids, candidates):
        values = self.apply(input_ids, candidates.values, candidates.ids)
        return candidates.with_values(values, still_sorted=self.keeps_order)


# ---- XTC --------------------------------------------------------------------------------------------


class XTC(_RowRule):
    """Exclude Top Choices: sometimes remove every likely token but the least likely of them.

    With chance ``xtc_probability`` per row (one uniform draw per row and step from that row's generator,
    ``context.generators[row]``, or the global RNG when there are none), the tokens whose probability is at
    least ``xtc_threshold`` are found; if there are two or more, all of them are removed except the least
    likely (tokens tied with it all stay). Nothing is removed if that would leave fewer than
    ``min_tokens_to_keep`` tokens in the row (llama.cpp's rule).

    Args:
        xtc_threshold: in (0, 0.5]; above 0.5 no two tokens can reach it.
        xtc_probability: in (0, 1]; 1 applies at every step.
        min_tokens_to_keep: at least 1.

    Example:
        >>> xtc = XTC(0.2, 1.0)
        >>> xtc.process(None, torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])))
        tensor([[   -inf, -1.2040, -1.8971, -2.9957]])
    """

    keeps_order = True  # removes the largest values: the rest stays in order (-inf entries are padding)

    def __init__(self, xtc_threshold: float, xtc_probability: float, min_tokens_to_keep: int = 1):
        check(is_real(xtc_threshold) and 0 < xtc_threshold <= 0.5, "xtc_threshold", xtc_threshold, "in (0, 0.5]")
        check(
            is_real(xtc_probability) and 0 < xtc_probability <= 1, "xtc_probability", xtc_probability, "in (0, 1]",
            "to turn XTC off leave it out",
        )  # fmt: skip
        check(is_count(min_tokens_to_keep, 1), "min_tokens_to_keep", min_tokens_to_keep, "an integer ≥ 1")
        self.xtc_threshold = float(xtc_threshold)
        self.xtc_probability = float(xtc_probability)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def apply(self, input_ids, values, ids):
        rows = values.shape[0]
        chance = decoders.row_uniforms(rows, self.context.generators, values.device)  # every step, for every row
        probs = log_probs(values, ids).exp()
        finite = torch.isfinite(values)
        above = finite & (probs >= self.xtc_threshold)
        least = torch.where(above, probs, torch.full_like(probs, math.inf)).amin(dim=-1, keepdim=True)
        remove = above & (probs > least)
        survivors = finite.sum(dim=-1) - remove.sum(dim=-1)
        active = (chance <= self.xtc_probability) & (above.sum(dim=-1) >= 2) & (survivors >= self.min_tokens_to_keep)
        return values.masked_fill(remove & active.unsqueeze(-1), NEG_INF)


# ---- dynamic temperature -------------------------------------------------------------------------------


class DynamicTemperature(_RowRule):
    """Entropy-scaled temperature (llama.cpp ``temp_ext``).

    With ``N`` the number of tokens still in the row and ``H`` the entropy of their distribution,
    ``T = Tmin + (Tmax − Tmin) · (H / ln N) ** dynatemp_exponent`` with ``Tmin = max(0, temperature −
    dynatemp_range)`` and ``Tmax = temperature + dynatemp_range``; logits are divided by ``T``. A row with one
    token is left as it is; ``T = 0`` keeps only the most likely token(s) (llama.cpp's temperature ≤ 0).
    ``dynatemp_range = 0`` is plain temperature.

    Args:
        temperature: the centre of the range, > 0.
        dynatemp_range: ≥ 0.
        dynatemp_exponent: > 0; 1 maps normalised entropy linearly.

    Example:
        >>> DynamicTemperature(1.0, 0.5).process(None, torch.tensor([[0.0, 0.0]]))  # max entropy: T = 1.5
        tensor([[0., 0.]])
    """

    keeps_order = True

    def __init__(self, temperature: float, dynatemp_range: float = 0.0, dynatemp_exponent: float = 1.0):
        check(
            is_real(temperature) and temperature > 0, "temperature", temperature, "a finite number > 0",
            "for 0 use the greedy selector",
        )  # fmt: skip
        check(is_real(dynatemp_range) and dynatemp_range >= 0, "dynatemp_range", dynatemp_range, "a finite number ≥ 0")
        check(
            is_real(dynatemp_exponent) and dynatemp_exponent > 0, "dynatemp_exponent", dynatemp_exponent, "a finite number > 0"
        )
        self.temperature = float(temperature)
        self.dynatemp_range = float(dynatemp_range)
        self.dynatemp_exponent = float(dynatemp_exponent)
        # plain temperature maps each value on its own: the chain may fuse it with a following top-k
        self.elementwise_monotone = self.dynatemp_range == 0

    @property
    def bounds(self) -> tuple[float, float]:
        """``(Tmin, Tmax)``."""
        return max(0.0, self.temperature - self.dynatemp_range), self.temperature + self.dynatemp_range

    def temperatures(self, values: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The temperature ``[B, 1]`` (float64) each row gets; NaN for rows with fewer than two tokens."""
        low, high = self.bounds
        lp = log_probs(values, ids)
        count = torch.isfinite(values).sum(dim=-1, keepdim=True).double()
        normalised = (entropy(lp, ids) / count.log()).clamp(0.0, 1.0)  # 0/0 = NaN where count is 1
        return low + (high - low) * normalised.pow(self.dynatemp_exponent)

    def apply(self, input_ids, values, ids):
        if self.dynatemp_range == 0:
            return values / self.temperature
        temperature = self.temperatures(values, ids)
        single = torch.isfinite(values).sum(dim=-1, keepdim=True) <= 1
        cold = ~single & (temperature <= 0)
        t = torch.where(single | cold, torch.ones_like(temperature), temperature).to(values.dtype)
        out = torch.where(single, values, values / t)
        if bool(cold.any()):  # T = 0: greedy, keep the largest value(s) only
            out = torch.where(cold & (values < values.amax(dim=-1, keepdim=True)), NEG_INF, out)
        return out


# ---- mirostat v2 ------------------------------------------------------------------------------------


class MirostatV2(_RowRule):
    """Mirostat 2.0: keep the surprise of the chosen tokens near a target ``mirostat_tau`` (bits).

    Each row has a threshold μ, ``2 · mirostat_tau`` at :meth:`reset`. :meth:`process` removes the tokens with
    surprise ``−log2 p > μ`` (if that removes everything, the most likely token(s) stay). After the selector
    picks, :meth:`accept` updates ``μ −= mirostat_eta · (s − mirostat_tau)`` with ``s`` the surprise of the
    chosen token under the truncated distribution renormalised (as llama.cpp's ``mirostat_v2``). A row whose
    chosen token was not among this processor's survivors (a finished row's padding) keeps its μ.
    :meth:`reorder` follows searches that fork rows (beam search): each new row takes its parent's μ.
    :meth:`rollback` follows speculative decoding: a row's μ goes back to its value before the tokens it forgets.

    Use it with the ``sample`` selector (llama.cpp's mirostat samples by itself).

    Args:
        mirostat_tau: target surprise in bits, > 0 (llama.cpp default 5).
        mirostat_eta: learning rate, > 0 (llama.cpp default 0.1).
    """

    keeps_order = True

    def __init__(self, mirostat_tau: float, mirostat_eta: float):
        check(is_real(mirostat_tau) and mirostat_tau > 0, "mirostat_tau", mirostat_tau, "a finite number > 0")
        check(is_real(mirostat_eta) and mirostat_eta > 0, "mirostat_eta", mirostat_eta, "a finite number > 0")
        self.mirostat_tau = float(mirostat_tau)
        self.mirostat_eta = float(mirostat_eta)
        self._mu: torch.Tensor | None = None
        self._last: tuple[torch.Tensor | None, torch.Tensor] | None = None
        self._history: list[list[float]] = []  # per row, μ before each token it accepted

    @property
    def mu(self) -> torch.Tensor | None:
        """The current μ of each row (float64 ``[B]``), None before the first step."""
        return None if self._mu is None else self._mu.clone()

    def reset(self, context):
        super().reset(context)
        rows = len(context.generators) if context.generators is not None else None
        self._mu = None if rows is None else torch.full((rows,), 2 * self.mirostat_tau, dtype=torch.float64)
        self._last = None
        self._history = []

    def apply(self, input_ids, values, ids):
        rows = values.shape[0]
        if self._mu is None or self._mu.shape[0] != rows:  # first call, or used without reset
            self._mu = torch.full((rows,), 2 * self.mirostat_tau, dtype=torch.float64)
        lp = log_probs(values, ids)
        keep = (-lp / LN2 <= self._mu.unsqueeze(-1)) & torch.isfinite(values)
        top = values.amax(dim=-1, keepdim=True)
        keep |= ~keep.any(dim=-1, keepdim=True) & (values == top)
        out = values.masked_fill(~keep, NEG_INF)
        self._last = (None if ids is None else ids.clone(), log_probs(out, ids))
        return out

    def reorder(self, rows):
        """Row i continues old row ``rows[i]``: its μ, and the distribution its next accepted token is scored by."""
        if self._mu is not None:
            self._mu = self._mu.index_select(0, rows.to(self._mu.device))
        if self._last is not None:
            ids, lp = self._last
            self._last = (None if ids is None else ids.index_select(0, rows.to(ids.device)), lp.index_select(0, rows.to(lp.device)))
        if self._history:
            self._history = [list(self._history[row]) for row in rows.tolist()]

    def rollback(self, counts):
        """Row i forgets its last ``counts[i]`` accepted tokens: μ returns to its value before them."""
        if self._mu is None or not self._history:
            return
        mu = self._mu.tolist()
        for row, count in enumerate(counts):
            if count:
                mu[row] = self._history[row][-count]
                del self._history[row][-count:]
        self._mu = torch.tensor(mu, dtype=torch.float64, device=self._mu.device)

    def accept(self, tokens):
        if self._last is None or self._mu is None:
            return
        ids, lp = self._last
        self._last = None
        if not self._history:
            self._history = [[] for _ in range(self._mu.shape[0])]
        for row, value in enumerate(self._mu.tolist()):
            self._history[row].append(value)
        tokens = tokens.to(lp.device).view(-1, 1)
        if ids is None:
            chosen = lp.gather(1, tokens.clamp(0, lp.shape[1] - 1)).squeeze(-1)
        else:
            match = (ids == tokens) & torch.isfinite(lp)
            chosen = torch.where(match, lp, torch.full_like(lp, NEG_INF)).amax(dim=-1)
        surprise = -chosen / LN2
        update = torch.isfinite(surprise)
        self._mu = torch.where(update, self._mu - self.mirostat_eta * (surprise - self.mirostat_tau), self._mu)


# ---- DRY --------------------------------------------------------------------------------------------

_VOCAB_TEXTS: weakref.WeakKeyDictionary[object, list[str]] = weakref.WeakKeyDictionary()


def _vocab_texts(tokenizer) -> list[str]:
    """The text of every token id of ``tokenizer`` (decoded one by one; cached per tokenizer)."""
    try:
        return _VOCAB_TEXTS[tokenizer]
    except (KeyError, TypeError):
        pass
    texts = [tokenizer.decode([token]) for token in range(len(tokenizer))]
    try:
        _VOCAB_TEXTS[tokenizer] = texts
    except TypeError:
        pass
    return texts


def z_function(sequence: Sequence[int]) -> list[int]:
    """``z[i]`` = length of the longest common prefix of ``sequence`` and ``sequence[i:]`` (``z[0] = 0``)."""
    n = len(sequence)
    z = [0] * n
    left = right = 0
    for i in range(1, n):
        if i < right:
            z[i] = min(right - i, z[i - left])
        while i + z[i] < n and sequence[z[i]] == sequence[i + z[i]]:
            z[i] += 1
        if i + z[i] > right:
            left, right = i, i + z[i]
    return z


def dry_repeat_lengths(
    tokens: Sequence[int], allowed_length: int, breakers: dict[int, list[tuple[int, ...]]]
) -> dict[int, int]:
    """For each token that would extend a repeat of at least ``allowed_length``: the longest such repeat.

    ``tokens`` is the context (already cut to the last ``dry_penalty_last_n``). A repeat is a suffix of the
    context that also ends at an earlier position ``j``; the token at ``j + 1`` would extend it. Suffixes stop
    before the most recent sequence breaker (``breakers`` maps a breaker's first token to the tails of the
    breakers that start with it). Lengths come from the Z-function of the reversed context, O(n).
    """
    n = len(tokens)
    if n <= allowed_length:
        return {}
    limit = n
    for distance in range(n):  # the most recent breaker: the suffix may not reach into it
        tails = breakers.get(tokens[n - 1 - distance])
        if not tails:
            continue
        start = n - distance
        longest = max(
            (len(tail) for tail in tails if len(tail) <= distance and tuple(tokens[start : start + len(tail)]) == tail),
            default=-1,
        )
        if longest >= 0:
            limit = distance - longest
            break
    if limit < allowed_length:
        return {}
    z = z_function(list(reversed(tokens)))
    repeats: dict[int, int] = {}
    for shift in range(1, n):  # the earlier repeat ends at n - 1 - shift; the token after it is tokens[n - shift]
        length = min(z[shift], limit)
        if length >= allowed_length:
            token = tokens[n - shift]
            if repeats.get(token, -1) < length:
                repeats[token] = length
    return repeats


class DRY(decoders.Processor):
    """DRY ("Don't Repeat Yourself"): penalise tokens that would extend a verbatim repeat of earlier text.

    For each token that, appended to the context, would continue a repeat — the longest suffix ``L`` of the
    context (within the last ``dry_penalty_last_n`` tokens, prompt included) that also occurs earlier, followed
    there by this token — with ``L ≥ dry_allowed_length``: ``logit −= dry_multiplier · dry_base ** (L −
    dry_allowed_length)`` (the exponent clamped so the power stays below float32's max, as llama.cpp does).
    Sequence breakers stop a repeat: the suffix may not reach into the most recent breaker, and a token that
    is itself a breaker is never penalised.

    Breakers are strings. At :meth:`reset` each is tokenized with the model's tokenizer (a multi-token breaker
    is matched as a sequence), and, as in llama.cpp, every vocabulary token whose text contains a breaker is a
    single-token breaker too. Repeat lengths come from the Z-function of the reversed context (O(n) per row).

    Args:
        dry_multiplier: > 0.
        dry_base: ≥ 1.
        dry_allowed_length: repeats shorter than this are free, ≥ 1.
        dry_penalty_last_n: how many of the last tokens to look at, ≥ 1; None for all.
        dry_sequence_breakers: strings; default llama.cpp's ``["\\n", ":", "\\"", "*"]``.
    """

    supports_candidates = True

    def __init__(
        self,
        dry_multiplier: float,
        dry_base: float = 1.75,
        dry_allowed_length: int = 2,
        dry_penalty_last_n: int | None = None,
        dry_sequence_breakers: Sequence[str] = ("\n", ":", '"', "*"),
    ):
        check(
            is_real(dry_multiplier) and dry_multiplier > 0, "dry_multiplier", dry_multiplier, "a finite number > 0",
            "to turn DRY off leave it out",
        )  # fmt: skip
        check(is_real(dry_base) and dry_base >= 1, "dry_base", dry_base, "a finite number ≥ 1")
        check(is_count(dry_allowed_length, 1), "dry_allowed_length", dry_allowed_length, "an integer ≥ 1")
        check(
            dry_penalty_last_n is None or is_count(dry_penalty_last_n, 1), "dry_penalty_last_n", dry_penalty_last_n,
            "an integer ≥ 1 or None (all tokens)",
        )  # fmt: skip
        check(
            not isinstance(dry_sequence_breakers, str) and all(isinstance(b, str) and b for b in dry_sequence_breakers),
            "dry_sequence_breakers", dry_sequence_breakers, "a list of non-empty strings",
        )  # fmt: skip
        self.dry_multiplier = float(dry_multiplier)
        self.dry_base = float(dry_base)
        self.dry_allowed_length = int(dry_allowed_length)
        self.dry_penalty_last_n = dry_penalty_last_n
        self.dry_sequence_breakers = list(dry_sequence_breakers)
        self.max_exponent = int(FLOAT_MAX_LOG / math.log(self.dry_base)) if self.dry_base > 1.000001 else 0
        self._breakers: dict[int, list[tuple[int, ...]]] | None = None if self.dry_sequence_breakers else {}

    def reset(self, context):
        super().reset(context)
        self._breakers = self.breaker_table(context.tokenizer)

    def breaker_table(self, tokenizer) -> dict[int, list[tuple[int, ...]]]:
        """Map each breaker's first token to the rest of it (``()`` for single-token breakers)."""
        if not self.dry_sequence_breakers:
            return {}
        if tokenizer is None:
            raise SequenceBreakerError(
                "DRY needs a model's tokenizer to turn dry_sequence_breakers into token ids: run it through "
                "decoders.generate, or call chain.reset(decoders.DecodeContext(tokenizer=...)) first "
                "(or pass dry_sequence_breakers=[] for no breakers)"
            )
        table: dict[int, list[tuple[int, ...]]] = {}

        def add(head: int, tail: tuple[int, ...]) -> None:
            tails = table.setdefault(head, [])
            if tail not in tails:
                tails.append(tail)

        for breaker in self.dry_sequence_breakers:
            ids = list(tokenizer.encode(breaker, add_special_tokens=False))
            if not ids:
                raise SequenceBreakerError(
                    f"DRY sequence breaker {breaker!r} tokenizes to no tokens with this model's tokenizer: "
                    "remove it from dry_sequence_breakers"
                )
            add(int(ids[0]), tuple(int(i) for i in ids[1:]))
        texts = _vocab_texts(tokenizer)
        for token, text in enumerate(texts):
            if any(breaker in text for breaker in self.dry_sequence_breakers):
                add(token, ())
        return table

    def _penalties(self, input_ids: torch.LongTensor | None, rows: int) -> list[dict[int, float]]:
        """Per row: token id → amount to subtract."""
        if self._breakers is None:
            raise SequenceBreakerError(
                "DRY was not reset with a tokenizer: call chain.reset(decoders.DecodeContext(tokenizer=...)) first, "
                "or pass dry_sequence_breakers=[]"
            )
        if input_ids is None or input_ids.shape[-1] == 0:
            return [{} for _ in range(rows)]
        padding = self.context.padding or [0] * input_ids.shape[0]
        singles = {token for token, tails in self._breakers.items() if () in tails}
        out = []
        for row, pad in zip(input_ids.tolist(), padding):
            row = row[pad:]  # a batch's left padding is not text
            if self.dry_penalty_last_n is not None:
                row = row[-self.dry_penalty_last_n :]
            repeats = dry_repeat_lengths(row, self.dry_allowed_length, self._breakers)
            amounts = {}
            for token, length in repeats.items():
                if token in singles:
                    continue
                exponent = length - self.dry_allowed_length
                if self.max_exponent > 0:
                    exponent = min(exponent, self.max_exponent)
                amounts[token] = self.dry_multiplier * self.dry_base**exponent
            out.append(amounts)
        return out

    def process(self, input_ids, logits):
        out = logits.clone()
        vocab = logits.shape[-1]
        for row, amounts in enumerate(self._penalties(input_ids, logits.shape[0])):
            tokens = [t for t in amounts if 0 <= t < vocab]
            if tokens:
                index = torch.tensor(tokens, dtype=torch.long, device=logits.device)
                amount = torch.tensor([amounts[t] for t in tokens], dtype=logits.dtype, device=logits.device)
                out[row, index] = out[row, index] - amount
        return out

    def process_candidates(self, input_ids, candidates):
        values = candidates.values.clone()
        for row, amounts in enumerate(self._penalties(input_ids, values.shape[0])):
            if not amounts:
                continue
            ids = candidates.ids[row]
            tokens = torch.tensor(list(amounts), dtype=torch.long, device=ids.device)
            amount = torch.tensor(list(amounts.values()), dtype=values.dtype, device=values.device)
            match = ids.unsqueeze(-1) == tokens  # [k, m]
            hit = match.any(dim=-1)
            if bool(hit.any()):
                values[row, hit] = values[row, hit] - amount[match[hit].int().argmax(dim=-1)]
        return candidates.with_values(values)
