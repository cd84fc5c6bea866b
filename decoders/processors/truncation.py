"""Temperature and the truncation samplers: top-k, top-p, min-p, typical, epsilon, eta, top-nσ.

Each dense rule gives the same scores as the transformers warper of the same name (llama.cpp's rule for
top-nσ); see docs/semantics.md. Every rule here depends only on the finite values of a row, so each also runs
unchanged on a candidate set.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from decoders.processors.base import NEG_INF, Candidates, Processor, check_parameter, is_count, is_real
from decoders.processors.selection import (
    Scratch,
    aligned_scatter,
    aligned_tail_row,
    in_blocks,
    largest,
    mass_cut,
    row_slices,
    take_rows,
    sorted_by_key,
    sorted_values,
    thread_scratch,
)

#: vocabularies at least this large get the fast candidate paths of top-p and min-p used without top-k, and the
#: sort-free cuts of top-p and typical-p
FAST_VOCAB = 4096
#: top-p without top-k: a row whose cut lies this close to 1 - top_p is decided by the dense rule
TOP_P_MARGIN = 1e-4
#: top-p without top-k: past this many largest values, a row still short of top_p by more than CANDIDATE_SLACK
#: (a flat row: its nucleus is thousands of tokens) is left to the dense rule, which cuts it without sorting
CANDIDATE_NUCLEUS = 512
CANDIDATE_SLACK = 0.1
#: sort-free top-p: a cut whose neighbouring cumulative masses lie within this fraction of 1 - top_p is left to the
#: exact rule (transformers' float32 sums over its sorted row differ from exact sums by rounding; measured < 1e-6)
TOP_P_BAND = 5e-6
#: sort-free typical-p: the same for its cut at typical_p (its sums run in order of distance, mixing large and
#: tiny probabilities, and round off up to ~1e-4 of the mass on a 152k vocabulary)
TYPICAL_BAND = 2e-3
#: typical-p, sorted by distance: equal distances of different logits (nearly equal logits rounded alike) may sit
#: in another order in transformers' sort; its cumulative masses then change by rounding (measured: not at all at
#: the ends of such groups over 64 realistic rows with 100-180 of them each), so a cut this far from typical_p
#: (relative) stands
REORDER_BAND = 1e-6
#: logits this far below a row's maximum have probability exactly 0 in float32
UNDERFLOW = 104.0
#: below this, ``exp`` underflows (to subnormals or 0) and ``torch.exp`` takes a slow path, also for ``-inf``
#: (measured 3-45× slower); the rules' float64 weight estimates raise such values to it first: each then weighs
#: 1.6e-38 instead of less, far inside every band
EXP_FLOOR = -87.0


def _sort_free(logits: torch.Tensor) -> bool:
    """Whether the sort-free cuts apply: float32 on the CPU (whose rounding the bands are measured for), a long row."""
    return logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.shape[-1] >= FAST_VOCAB


def _finite_rows(maxima: torch.Tensor) -> torch.Tensor:
    """Bool ``[B]``, from the rows' maxima ``[B, 1]``: rows with no NaN or +inf and at least one finite value (the
    others get the sorting rule)."""
    return torch.isfinite(maxima).squeeze(-1)


def _exp_under_max(values: torch.Tensor, maxima: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``exp(x - max)`` per row with values under :data:`EXP_FLOOR` raised to it first (off ``exp``'s slow path)."""
    return torch.sub(values, maxima, out=out).clamp_(min=EXP_FLOOR).exp_()


def _check_min_keep(min_tokens_to_keep: int) -> None:
    check_parameter(is_count(min_tokens_to_keep, 1), "min_tokens_to_keep", min_tokens_to_keep, "an integer ≥ 1")


class ValueProcessor(Processor):
    """A processor whose rule sees only a row's values, never token ids.

    Tokens outside a candidate set are ``-inf`` and carry no probability, so such a rule keeps the same
    tokens on a candidate set's values as on the dense row. ``candidate_rows`` says how the candidate path
    gets bit-for-bit the dense path's floats:

    * ``"values"``: elementwise rules and thresholds read off the values run on the ``[B, k]`` values;
    * ``"aligned"``: rules whose only reductions are a softmax (and max/top-k) run on a short row that keeps
      each value's place modulo 64 (see :mod:`decoders.processors.selection`): the softmax adds in the
      same groupings, so it rounds exactly as on the dense row;
    * ``"dense"``: rules built on general sums (entropy, mean), which torch may split across threads at
      places that depend on the row's length, run on the dense row the candidates stand for.
    """

    supports_candidates = True
    #: whether the rule keeps the descending order of values (it only divides or removes the smallest)
    keeps_order = False
    #: how the candidate path runs the rule: "values", "aligned" or "dense" (see the class docstring)
    candidate_rows = "values"

    def process_candidates(self, input_ids: torch.LongTensor, candidates: Candidates) -> Candidates:
        if self.candidate_rows == "values":
            values = self.process(input_ids, candidates.values)
        elif self.candidate_rows == "aligned":
            row, columns = aligned_scatter(candidates.values, candidates.ids, candidates.vocab_size)
            values = self.process(input_ids, row).gather(1, columns).masked_fill(candidates.values == NEG_INF, NEG_INF)
        else:
            values = _through_dense(self, input_ids, candidates)
        return candidates.with_values(values, still_sorted=self.keeps_order)


def _through_dense(processor: Processor, input_ids: torch.LongTensor, candidates: Candidates) -> torch.Tensor:
    """The candidates' values after running ``processor`` on the dense row they stand for (padding stays -inf)."""
    values = processor.process(input_ids, candidates.to_dense()).gather(1, candidates.ids)
    return values.masked_fill(candidates.values == NEG_INF, NEG_INF)


class Temperature(ValueProcessor):
    """Divide logits by ``temperature`` (transformers ``TemperatureLogitsWarper``).

    Args:
        temperature: strictly positive; below 1 sharpens, above 1 flattens.

    Example:
        >>> Temperature(0.5).process(None, torch.tensor([[1.0, 2.0]]))
        tensor([[2., 4.]])
    """

    keeps_order = True
    elementwise_monotone = True

    def __init__(self, temperature: float):
        check_parameter(
            is_real(temperature) and temperature > 0, "temperature", temperature, "a finite number > 0",
            "temperature 0 is greedy: use the greedy selector",
        )  # fmt: skip
        self.temperature = float(temperature)

    def process(self, input_ids, logits):
        return logits / self.temperature


class TopK(ValueProcessor):
    """Keep the ``top_k`` largest logits of each row; ties with the k-th largest survive.

    Args:
        top_k: how many tokens to keep (at least 1).
        min_tokens_to_keep: a floor on ``top_k``.

    Example:
        >>> TopK(2).process(None, torch.tensor([[1.0, 3.0, 2.0, 3.0]]))
        tensor([[-inf, 3., -inf, 3.]])
    """

    keeps_order = True

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        check_parameter(is_count(top_k, 1), "top_k", top_k, "an integer ≥ 1", "to keep every token, leave top_k out")
        _check_min_keep(min_tokens_to_keep)
        self.top_k = max(int(top_k), int(min_tokens_to_keep))

    def process(self, input_ids, logits):
        k = min(self.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, NEG_INF)

    def process_candidates(self, input_ids, candidates):
        if candidates.values.shape[-1] <= self.top_k:
            return candidates
        return super().process_candidates(input_ids, candidates)

    def to_candidates(self, input_ids, logits, transform=None):
        """The top-k as a candidate set, or None when ties at the k-th value need the dense rule.

        ``transform`` is an elementwise monotone processor's rule (a temperature) that the chain asks to run
        first: the largest values stay the largest, so it is applied to the candidates only, and the cut is
        checked again on the transformed values (a division may round two values into a tie).
        """
        vocab_size = logits.shape[-1]
        width = self.top_k + max(8, self.top_k // 4)
        if width >= vocab_size:
            return None
        values, ids = largest(logits, width)
        if transform is not None:
            values = transform(values)
        kth = values[:, self.top_k - 1 : self.top_k]
        if bool((values[:, -1:] >= kth).any()):
            return None  # ties with the k-th value reach past the margin: let the dense rule decide
        keep = ~(values < kth)  # as the dense rule: NaN is not below the cut, so it stays for the chain to report
        kept = int(keep.sum(dim=-1).max())
        values = values.masked_fill(~keep, NEG_INF)
        return Candidates(values[:, :kept], ids[:, :kept], vocab_size, sorted_desc=True)


class TopP(ValueProcessor):
    """Nucleus sampling: keep the smallest set of most likely tokens whose mass reaches ``top_p``.

    Args:
        top_p: in (0, 1]; 1 keeps every token (even those whose probability underflows to 0, which
            transformers' class would remove; its ``generate`` does not apply top-p at 1).
        min_tokens_to_keep: always keep at least this many of the most likely tokens.

    Example:
        >>> TopP(0.7).process(None, torch.log(torch.tensor([[0.5, 0.3, 0.2]])))
        tensor([[-0.6931, -1.2040,    -inf]])
    """

    keeps_order = True

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        check_parameter(is_real(top_p) and 0 < top_p <= 1, "top_p", top_p, "in (0, 1]", "1 keeps every token")
        _check_min_keep(min_tokens_to_keep)
        self.top_p = float(top_p)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def _remove_sorted(self, ascending: torch.Tensor) -> torch.Tensor:
        """transformers' rule on a row sorted ascending: a prefix of it to remove."""
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - self.top_p)
        remove[..., -self.min_tokens_to_keep :] = False
        return remove

    def to_candidates(self, input_ids, logits):
        """The nucleus as a candidate set, without sorting the vocabulary.

        For each row, takes its largest values (64, then 8× more while they hold less than ``top_p`` of the
        mass), computes each one's share of the row's mass in float64, and cuts where the mass of the larger
        tokens reaches ``top_p``. The dense rule (transformers') sums probabilities in float32 over the sorted
        vocabulary, which can differ from exact sums by rounding; so a row whose cut lies within
        :data:`TOP_P_MARGIN` of the threshold, or has equal values on both sides of the cut, is decided by the
        dense rule itself, and so the kept set is the dense rule's. None when some row's nucleus is a large part
        of the vocabulary, or 512 tokens hold less than ``top_p - 0.1`` (the dense rule finds such wide cuts
        without sorting: see :meth:`_cuts`); the heaviest 512 blocks of 64 columns bound what 512 tokens can hold,
        so most such rows are known before any largest values are taken.
        """
        rows, vocab_size = logits.shape
        if self.top_p >= 1.0 or self.min_tokens_to_keep > 1 or vocab_size < FAST_VOCAB or logits.dtype != torch.float32:
            return None
        row_max = logits.amax(dim=-1, keepdim=True)
        masses = []
        for at in row_slices(rows, vocab_size):  # a few rows at a time, giving up at the first flat one
            block_mass = in_blocks(_exp_under_max(logits[at], row_max[at])).sum(dim=-1)  # exp(x - max) per block
            masses.append(block_mass.sum(dim=-1).double())  # float32 sums, far inside the margin
            if block_mass.shape[-1] >= 4 * CANDIDATE_NUCLEUS:
                # the CANDIDATE_NUCLEUS largest values lie in at most that many blocks: when even the heaviest
                # blocks hold too little, the loop below would give up at that width, so give up before it
                heaviest = block_mass.topk(CANDIDATE_NUCLEUS, dim=-1, sorted=False).values.sum(dim=-1).double()
                if bool((heaviest < (self.top_p - CANDIDATE_SLACK) * masses[-1]).any()):
                    return None
        mass = torch.cat(masses)
        kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        pending = list(range(rows))
        width = 64
        while pending:
            if width * 16 > vocab_size:
                return None
            values, ids = largest(logits if len(pending) == rows else logits[pending], width)
            probs = torch.exp((values - row_max[pending]).double()) / mass[pending, None]
            inclusive = probs.cumsum(dim=-1)
            exclusive = inclusive - probs
            keep = exclusive < self.top_p
            keep[:, 0] = True
            count = keep.sum(dim=-1, keepdim=True)
            tie_at_cut = (values.gather(1, count - 1) == values.gather(1, count.clamp(max=width - 1))).squeeze(-1)
            unsure = ((exclusive - self.top_p).abs() < TOP_P_MARGIN).any(dim=-1) | tie_at_cut
            enough = (inclusive[:, -1] >= self.top_p + TOP_P_MARGIN).tolist()
            if width >= CANDIDATE_NUCLEUS and bool((inclusive[:, -1] < self.top_p - CANDIDATE_SLACK).any()):
                return None  # a nucleus of thousands of tokens: the dense rule cuts it without sorting
            still_pending, exact_rows = [], []
            for index, row in enumerate(pending):
                if not enough[index]:
                    still_pending.append(row)
                elif bool(unsure[index]):
                    exact_rows.append(index)
                else:
                    n = int(count[index])
                    kept[row] = (values[index, :n], ids[index, :n])
            if exact_rows:  # the dense rule, once for all these rows; its kept tokens are its finite ones
                rows_at = [pending[index] for index in exact_rows]
                exact = self.process(input_ids, logits[rows_at])
                exact_values, exact_ids = largest(exact, int(torch.isfinite(exact).sum(dim=-1).max()))
                for row, row_values, row_ids in zip(rows_at, exact_values, exact_ids):
                    kept[row] = (row_values, row_ids)
            pending = still_pending
            width *= 8
        used = max(len(values) for values, _ in kept.values())
        out_values = logits.new_full((rows, used), NEG_INF)
        out_ids = torch.zeros((rows, used), dtype=torch.long, device=logits.device)
        for row, (values, ids) in kept.items():
            out_values[row, : len(values)], out_ids[row, : len(ids)] = values, ids
        return Candidates(out_values, out_ids, vocab_size)

    def process(self, input_ids, logits):
        if self.top_p >= 1.0:  # keep everything, also tokens whose probability underflows to 0
            return logits.clone()
        if not _sort_free(logits):
            return self._process_sorting(logits)
        return _by_row_slices(logits, self._process_slice)

    def _process_slice(self, logits: torch.Tensor, out: torch.Tensor, scratch: Scratch) -> None:
        cut, unsure = self._cuts(logits, scratch)
        below = torch.lt(logits, cut, out=scratch.take("top_p.below", tuple(logits.shape), torch.bool, logits.device))
        torch.where(below, logits.new_tensor(NEG_INF), logits, out=out)
        if unsure.any():
            rows = unsure.nonzero().squeeze(-1)
            out[rows] = self._process_sorting(logits[rows])

    def _process_sorting(self, logits: torch.Tensor) -> torch.Tensor:
        """transformers' rule as it runs it: sort the row, cut the cumulative sum, scatter back."""
        ascending, order = torch.sort(logits, descending=False)
        remove_sorted = self._remove_sorted(ascending)
        remove = remove_sorted.scatter(1, order, remove_sorted)
        return logits.masked_fill(remove, NEG_INF)

    def _cuts(self, logits: torch.Tensor, scratch: Scratch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the smallest kept value ``[B, 1]``, found without an argsort; and the rows ``[B]`` only the
        sorting rule can decide (NaN/+inf, or equal values on both sides of the cut: which of them go is the sort's
        order).

        transformers keeps the tokens whose ascending cumulative probability exceeds ``1 - top_p``. A histogram
        threshold search (:func:`mass_cut`) finds that cut in exact arithmetic; it is the rule's own cut unless a
        neighbouring cumulative mass lies within :data:`TOP_P_BAND` of the threshold, where transformers' float32
        sums over its sorted row decide by rounding. Those rows are cut from the rule's own float32 sums, over
        the row's values sorted without indices.
        """
        threshold = float(torch.tensor(1 - self.top_p, dtype=torch.float32))  # the rule compares in float32
        cut = logits.new_full((logits.shape[0], 1), NEG_INF)
        maxima = logits.amax(dim=-1, keepdim=True)  # (torch.aminmax is several times slower than amax and amin)
        finite = _finite_rows(maxima)
        pending = finite.clone()
        if self.min_tokens_to_keep == 1 and finite.any():
            at = finite.nonzero().squeeze(-1)
            row_logits, row_max = take_rows(logits, at), take_rows(maxima, at)
            # exp(x - max) as the rule's softmax computes it (values under EXP_FLOOR raised to it), then in float64:
            # the probabilities up to one factor
            shape = tuple(row_logits.shape)
            exponentials = scratch.take("top_p.exp", shape, logits.dtype, logits.device)
            _exp_under_max(row_logits, row_max, out=exponentials)
            weights = scratch.take("top_p.weights", shape, torch.float64, logits.device).copy_(exponentials)
            low = torch.maximum(row_logits.amin(dim=-1, keepdim=True), row_max - UNDERFLOW)
            value, found, size = mass_cut(row_logits, weights, threshold, TOP_P_BAND, low, row_max, scratch)
            clear = found & (size == 1)
            cut[at[clear]] = value[clear]
            pending[at[clear]] = False
        unsure = ~finite
        if pending.any():  # the rule's float32 sums, over the values sorted
            at = pending.nonzero().squeeze(-1)
            ascending = sorted_values(take_rows(logits, at))
            first_kept = self._remove_sorted(ascending).sum(dim=-1, keepdim=True)  # what is removed is a prefix
            value = ascending.gather(1, first_kept)
            tied = ((first_kept > 0) & (ascending.gather(1, (first_kept - 1).clamp(min=0)) == value)).squeeze(-1)
            cut[at] = value
            unsure[at[tied]] = True
        return cut, unsure

    def process_candidates(self, input_ids, candidates):
        if self.top_p >= 1.0:
            return candidates
        # The dense rule sorts the whole row: V - k tokens at -inf, then these k values ascending. Rebuild the
        # end of that row, aligned as in the full row, so that its softmax and cumulative sum round exactly
        # as the dense rule's; what is removed is a prefix of it, i.e. every value below the first one kept.
        row = aligned_tail_row(candidates.sorted().values.flip(-1), candidates.vocab_size)
        first_kept = self._remove_sorted(row).sum(dim=-1, keepdim=True).clamp(max=row.shape[-1] - 1)
        threshold = row.gather(1, first_kept)
        last_removed = row.gather(1, (first_kept - 1).clamp(min=0))
        if bool(((first_kept > 0) & (last_removed == threshold) & torch.isfinite(threshold)).any()):
            # equal values on both sides of the cut: which of them survive is up to the dense rule's (unstable)
            # sort, so ask the dense rule
            return candidates.with_values(_through_dense(self, input_ids, candidates), still_sorted=True)
        values = candidates.values.masked_fill(candidates.values < threshold, NEG_INF)
        return candidates.with_values(values, still_sorted=True)


class MinP(ValueProcessor):
    """Keep tokens whose probability is at least ``min_p`` times that of the most likely token.

    Args:
        min_p: in [0, 1]; 0 keeps everything, 1 keeps only the most likely token(s).
        min_tokens_to_keep: always keep at least this many of the most likely tokens.

    Example:
        >>> MinP(0.5).process(None, torch.log(torch.tensor([[0.5, 0.3, 0.2]])))
        tensor([[-0.6931, -1.2040,    -inf]])
    """

    keeps_order = True
    candidate_rows = "aligned"  # a softmax, a max and a top-k: see ValueProcessor

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        check_parameter(is_real(min_p) and 0 <= min_p <= 1, "min_p", min_p, "in [0, 1]", "0 keeps every token")
        _check_min_keep(min_tokens_to_keep)
        self.min_p = float(min_p)
        self.min_tokens_to_keep = int(min_tokens_to_keep)
        if self.min_tokens_to_keep > 1:  # which of several tied tokens top-k keeps depends on their columns
            self.candidate_rows = "dense"

    def to_candidates(self, input_ids, logits):
        """The kept tokens as a candidate set, from the same probabilities the dense rule computes."""
        rows, vocab_size = logits.shape
        if self.min_tokens_to_keep > 1 or vocab_size < FAST_VOCAB:
            return None
        probs = torch.softmax(logits, dim=-1)
        threshold = self.min_p * probs.amax(dim=-1, keepdim=True)
        width = 64
        while True:
            if width * 16 > vocab_size:
                return None  # a flat distribution: most of the row survives, the dense rule is as cheap
            top_probs, ids = largest(probs, width)
            if bool((top_probs[:, -1:] < threshold).all()):  # every kept token is among these
                break
            width *= 8
        values = logits.gather(1, ids).masked_fill(top_probs < threshold, NEG_INF)
        return Candidates(values, ids, vocab_size)

    def process(self, input_ids, logits):
        probs = torch.softmax(logits, dim=-1)
        remove = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        keep_ids = torch.topk(probs, min(self.min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
        remove = remove.scatter(-1, keep_ids, False)
        return logits.masked_fill(remove, NEG_INF)


class TypicalP(ValueProcessor):
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy, up to ``typical_p`` mass.

    Tokens are ranked by ``|-log p - H|`` (``H`` the entropy); the first ``count(cumulative mass < typical_p) + 1``
    of that order are kept (transformers ``TypicalLogitsWarper``).

    Args:
        typical_p: mass to keep, in (0, 1]; 1 keeps every token.
        min_tokens_to_keep: always keep at least this many of the most typical tokens.

    Example:
        >>> TypicalP(0.5).process(None, torch.log(torch.tensor([[0.5, 0.3, 0.2]])))
        tensor([[-0.6931, -1.2040,    -inf]])
        >>> TypicalP(0.2).process(None, torch.log(torch.tensor([[0.5, 0.3, 0.2]])))
        tensor([[   -inf, -1.2040,    -inf]])
    """

    candidate_rows = "dense"  # the entropy is a general sum over the row

    def __init__(self, typical_p: float, min_tokens_to_keep: int = 1):
        check_parameter(is_real(typical_p) and 0 < typical_p <= 1, "typical_p", typical_p, "in (0, 1]", "1 keeps every token")
        _check_min_keep(min_tokens_to_keep)
        self.typical_p = float(typical_p)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def process(self, input_ids, logits):
        if self.typical_p >= 1.0:  # the cumulative mass may round below 1: keep everything explicitly
            return logits.clone()
        if not _sort_free(logits):
            _, distance, _ = self._typicality(logits, Scratch())
            return logits.masked_fill(self._remove_sorting(logits, distance), NEG_INF)
        return _by_row_slices(logits, self._process_slice)

    @staticmethod
    def _typicality(logits: torch.Tensor, scratch: Scratch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Probabilities, each token's distance ``|-log p - H|`` from the entropy and the entropy ``H`` ``[B, 1]``,
        as transformers computes them."""
        shape = tuple(logits.shape)
        take = lambda name: scratch.take(f"typical.{name}", shape, logits.dtype, logits.device)  # noqa: E731
        log_probs = torch.log_softmax(logits, dim=-1, out=take("log_probs"))
        probs = torch.exp(log_probs, out=take("probs"))
        entropy = -torch.mul(log_probs, probs, out=take("product")).nansum(-1, keepdim=True)
        return probs, log_probs.neg_().sub_(entropy).abs_(), entropy

    def _process_slice(self, logits: torch.Tensor, out: torch.Tensor, scratch: Scratch) -> None:
        probs, distance, entropy = self._typicality(logits, scratch)
        cut, unsure = self._cuts(logits, probs, distance, entropy, scratch)
        beyond = scratch.take("typical.beyond", tuple(logits.shape), torch.bool, logits.device)
        torch.gt(distance, cut, out=beyond)
        torch.where(beyond, logits.new_tensor(NEG_INF), logits, out=out)
        if unsure.any():
            rows = unsure.nonzero().squeeze(-1)
            out[rows] = logits[rows].masked_fill(self._remove_sorting(logits[rows], distance[rows]), NEG_INF)

    def _remove_sorting(self, logits: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """transformers' rule as it runs it: sort by distance, cut the cumulative sum, scatter back (a mask)."""
        sorted_distance, order = torch.sort(distance, descending=False)
        cumulative = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        last = (cumulative < self.typical_p).sum(dim=1).clamp(max=sorted_distance.shape[-1] - 1)
        remove_sorted = sorted_distance > sorted_distance.gather(1, last.view(-1, 1))
        remove_sorted[..., : self.min_tokens_to_keep] = False
        return remove_sorted.scatter(1, order, remove_sorted)

    def _cuts(
        self, logits: torch.Tensor, probs: torch.Tensor, distance: torch.Tensor, entropy: torch.Tensor, scratch: Scratch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the largest kept distance ``[B, 1]``, found without an argsort; and the rows ``[B]`` only the
        sorting rule can decide.

        The rule keeps every token whose distance is at most that of the token at which the cumulative mass, in
        order of distance, reaches ``typical_p``; equal distances share that fate, so only the group of equal
        distances where the mass is reached matters. A histogram threshold search (:func:`mass_cut`) finds it in
        exact arithmetic unless the mass before or through that group lies within :data:`TYPICAL_BAND` of
        ``typical_p`` (rows whose crossing lies among light tokens, see :meth:`_light_crossing`, skip the search);
        those rows are cut from the rule's own float32 sums over the logits sorted by distance
        (sorted as packed keys, without indices). Only rows where equal distances hold different logits (whose order
        in transformers' sort changes its float32 sums), NaN/+inf rows, and a ``min_tokens_to_keep`` floor splitting
        equal distances need the sorting rule itself.
        """
        rows, vocab_size = logits.shape
        mass = float(torch.tensor(self.typical_p, dtype=torch.float32))  # the rule compares in float32
        cut = logits.new_full((rows, 1), float("inf"))
        finite = _finite_rows(logits.amax(dim=-1, keepdim=True))
        pending = finite.clone()
        searched = None
        if self.min_tokens_to_keep == 1:  # flat rows go straight to the sorted sums
            searched = finite & ~self._light_crossing(probs, distance, entropy, mass, scratch)
        if searched is not None and searched.any():
            at = searched.nonzero().squeeze(-1)
            row_probs, row_distance = take_rows(probs, at), take_rows(distance, at)
            low = row_distance.amin(dim=-1, keepdim=True)
            high = torch.where(torch.isinf(row_distance), 0, row_distance).amax(dim=-1, keepdim=True)
            value, clear, _ = mass_cut(row_distance, row_probs, mass, TYPICAL_BAND, low, high, scratch)
            cut[at[clear]] = value[clear]
            pending[at[clear]] = False
        unsure = ~finite
        keep = min(self.min_tokens_to_keep, vocab_size)
        if pending.any():  # the rule's float32 sums, by distance
            at = pending.nonzero().squeeze(-1)
            sorted_distance, sorted_logits = sorted_by_key(take_rows(distance, at), take_rows(logits, at), scratch)
            shape = tuple(sorted_logits.shape)
            contiguous = scratch.take("typical.sorted_logits", shape, logits.dtype).copy_(sorted_logits)
            probs_in_order = scratch.take("typical.sorted_probs", shape, logits.dtype)
            torch.softmax(contiguous, dim=-1, out=probs_in_order)
            cumulative = torch.cumsum(probs_in_order, dim=-1, out=contiguous)
            last = _count_below(cumulative, mass, strict=True).clamp(max=vocab_size - 1)
            value = sorted_distance.gather(1, last)
            # equal distances of different logits may sit in another order in transformers' sort, which changes its
            # float32 sums by rounding only: that matters where the bounds of the group holding the crossing lie
            # within REORDER_BAND of typical_p
            start = _count_below(sorted_distance, value, strict=True)
            through = cumulative.gather(1, _count_below(sorted_distance, value, strict=False) - 1)
            before = torch.where(start > 0, cumulative.gather(1, (start - 1).clamp(min=0)), 0)
            band = REORDER_BAND * mass
            near = ~((before < mass - band) & (through > mass + band)).squeeze(-1)
            reordered = torch.zeros_like(near)
            for index in near.nonzero().squeeze(-1).tolist():  # row views, no copies of the strided rows
                row_distance, row_logits = sorted_distance[index].numpy(), sorted_logits[index].numpy()
                same_distance = row_distance[1:] == row_distance[:-1]
                reordered[index] = bool((same_distance & (row_logits[1:] != row_logits[:-1])).any())
            floor = sorted_distance[:, keep - 1 : keep]  # the min_tokens_to_keep most typical tokens stay
            split = (floor > value) & (sorted_distance[:, keep:].narrow(1, 0, min(1, vocab_size - keep)) == floor)
            cut[at] = torch.maximum(value, floor)
            unsure[at[reordered | split.any(dim=-1)]] = True
        return cut, unsure

    @staticmethod
    def _light_crossing(
        probs: torch.Tensor, distance: torch.Tensor, entropy: torch.Tensor, mass: float, scratch: Scratch
    ) -> torch.Tensor:
        """Bool ``[B]``: rows (flat ones) where the mass surely reaches ``typical_p`` among tokens of probability
        below ``2 · TYPICAL_BAND``, whose crossing group :func:`mass_cut` cannot tell from its band.

        A token more likely than ``exp(-H)`` lies ``H + log p`` from the entropy, so none lies further than the most
        likely token; past that distance there are only tokens less likely than ``exp(-H)``, light ones where
        ``H > -log(2 · TYPICAL_BAND)``. When the tokens up to that distance hold less than ``typical_p`` of the
        mass, the crossing is among those light tokens. Only high-entropy rows pay this pass; a heavy group of equal
        light tokens merely takes the sorted path.
        """
        light = torch.zeros(len(probs), dtype=torch.bool, device=probs.device)
        flat = (entropy > -math.log(2 * TYPICAL_BAND)).squeeze(-1)
        if flat.any():
            at = flat.nonzero().squeeze(-1)
            row_probs, row_distance = take_rows(probs, at), take_rows(distance, at)
            furthest_likely = take_rows(entropy, at) + row_probs.amax(dim=-1, keepdim=True).log()
            within = scratch.take("typical.within", tuple(row_probs.shape), torch.bool, probs.device)
            torch.le(row_distance, furthest_likely, out=within)
            near_mass = torch.where(within, row_probs, 0).sum(dim=-1)  # float32 sums: a heuristic's precision
            light[at] = near_mass < mass * (1 - TYPICAL_BAND) * row_probs.sum(dim=-1)
        return light


def _count_below(ascending: torch.Tensor, bound, strict: bool) -> torch.Tensor:
    """Per row of ``ascending`` (sorted CPU rows, possibly strided), how many values are ``< bound`` (``<=`` when
    not ``strict``) ``[B, 1]``: a binary search, not a pass over the row. ``bound``: a float or a ``[B, 1]`` tensor."""
    rows = ascending.numpy()
    bounds = np.broadcast_to(np.asarray(bound, dtype=rows.dtype).reshape(-1), (len(rows),))
    side = "left" if strict else "right"
    return torch.tensor([[np.searchsorted(row, b, side=side)] for row, b in zip(rows, bounds)], dtype=torch.long)


def _by_row_slices(logits: torch.Tensor, rule) -> torch.Tensor:
    """``rule(rows, out, scratch)`` on a few rows at a time (see :data:`CHUNK_VALUES`), writing each slice of the
    result; the slices take their temporaries from the thread's :func:`thread_scratch`."""
    out = torch.empty_like(logits)
    scratch = thread_scratch()
    for rows in row_slices(*logits.shape):
        rule(logits[rows], out[rows], scratch)
    return out


def _keep_largest(remove: torch.Tensor, logits: torch.Tensor, min_tokens_to_keep: int) -> torch.Tensor:
    """Clear ``remove`` where a logit is at least the row's ``min_tokens_to_keep``-th largest (ties kept)."""
    k = min(min_tokens_to_keep, logits.shape[-1])
    return remove & (logits < torch.topk(logits, k, dim=-1).values[..., -1:])


class EpsilonCutoff(ValueProcessor):
    """Remove tokens whose probability is below ``epsilon_cutoff``.

    Args:
        epsilon_cutoff: in (0, 1).
        min_tokens_to_keep: always keep at least this many of the most likely tokens.

    Example:
        >>> EpsilonCutoff(0.25).process(None, torch.log(torch.tensor([[0.5, 0.3, 0.2]])))
        tensor([[-0.6931, -1.2040,    -inf]])
    """

    keeps_order = True
    candidate_rows = "aligned"  # a softmax and a top-k: see ValueProcessor

    def __init__(self, epsilon_cutoff: float, min_tokens_to_keep: int = 1):
        check_parameter(
            is_real(epsilon_cutoff) and 0 < epsilon_cutoff < 1, "epsilon_cutoff", epsilon_cutoff, "in (0, 1)",
            "to keep every token, leave epsilon_cutoff out",
        )  # fmt: skip
        _check_min_keep(min_tokens_to_keep)
        self.epsilon_cutoff = float(epsilon_cutoff)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def process(self, input_ids, logits):
        remove = logits.softmax(dim=-1) < self.epsilon_cutoff
        return logits.masked_fill(_keep_largest(remove, logits, self.min_tokens_to_keep), NEG_INF)


class EtaCutoff(ValueProcessor):
    """Remove tokens with probability below ``min(eta, sqrt(eta) * exp(-entropy))``.

    Args:
        eta_cutoff: in (0, 1).
        min_tokens_to_keep: always keep at least this many of the most likely tokens.

    Example:
        >>> EtaCutoff(0.5).process(None, torch.log(torch.tensor([[0.5, 0.3, 0.2]])))
        tensor([[-0.6931, -1.2040,    -inf]])
        >>> EtaCutoff(0.3).process(None, torch.log(torch.tensor([[0.5, 0.3, 0.2]])))
        tensor([[-0.6931, -1.2040, -1.6094]])
    """

    keeps_order = True
    candidate_rows = "dense"  # the entropy is a general sum over the row

    def __init__(self, eta_cutoff: float, min_tokens_to_keep: int = 1):
        check_parameter(
            is_real(eta_cutoff) and 0 < eta_cutoff < 1, "eta_cutoff", eta_cutoff, "in (0, 1)",
            "to keep every token, leave eta_cutoff out",
        )  # fmt: skip
        _check_min_keep(min_tokens_to_keep)
        self.eta_cutoff = float(eta_cutoff)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def process(self, input_ids, logits):
        # a float32 scalar, as in transformers: the threshold then rounds as its does in every dtype
        eta = torch.tensor(self.eta_cutoff, dtype=torch.float32, device=logits.device)
        probs = logits.softmax(dim=-1)
        entropy = torch.distributions.Categorical(logits=logits).entropy()
        threshold = torch.min(eta, torch.sqrt(eta) * torch.exp(-entropy))[..., None]
        return logits.masked_fill(_keep_largest(probs < threshold, logits, self.min_tokens_to_keep), NEG_INF)


class TopNSigma(ValueProcessor):
    """Keep logits within ``top_n_sigma`` standard deviations of the row's maximum (llama.cpp top-nσ).

    Removes logits below ``max - n * std``, the standard deviation being the population one over the finite
    logits of the row (computed in float64). Dividing the logits by a temperature divides both sides, so the
    kept set does not change (exactly so for powers of two; otherwise a token lying at the boundary itself
    may move across it by one rounding).

    Args:
        top_n_sigma: n > 0.

    Example:
        >>> TopNSigma(1.0).process(None, torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
        tensor([[-inf, -inf, 2., 3.]])
        >>> TopNSigma(2.0).process(None, torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
        tensor([[-inf, 1., 2., 3.]])
    """

    keeps_order = True
    candidate_rows = "dense"  # mean and deviation are general sums over the row

    def __init__(self, top_n_sigma: float):
        check_parameter(
            is_real(top_n_sigma) and top_n_sigma > 0, "top_n_sigma", top_n_sigma, "a finite number > 0",
            "to keep every token, leave top_n_sigma out",
        )  # fmt: skip
        self.top_n_sigma = float(top_n_sigma)

    def process(self, input_ids, logits):
        finite = torch.isfinite(logits)
        count = finite.sum(dim=-1, keepdim=True).clamp(min=1)
        values = torch.where(finite, logits, 0).double()
        mean = values.sum(dim=-1, keepdim=True) / count
        variance = (torch.where(finite, values - mean, 0) ** 2).sum(dim=-1, keepdim=True) / count
        threshold = logits.double().amax(dim=-1, keepdim=True) - self.top_n_sigma * variance.sqrt()
        return logits.masked_fill(logits.double() < threshold, NEG_INF)


__all__ = ["Temperature", "TopK", "TopP", "MinP", "TypicalP", "EpsilonCutoff", "EtaCutoff", "TopNSigma"]
