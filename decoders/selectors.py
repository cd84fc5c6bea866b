"""Selectors: the last link of a chain, turning processed logits into one token id per row.

``sample`` draws by inverse transform in token-id order with one uniform number per row from that row's
generator, over fixed-point weights whose integer sums are exact. Tokens outside a candidate set weigh exactly
zero, so the dense path and the candidate path pick the same token from the same draw.
"""

from __future__ import annotations

import torch

from decoders.processors.base import Candidates, Component
from decoders.processors.selection import BLOCK, first_argmax, in_blocks, row_slices


class Selector(Component):
    """Base class: ``select(logits [B, V], generators) -> ids [B]`` (and the same on a candidate set)."""

    def select(self, logits: torch.Tensor, generators: list[torch.Generator] | None = None) -> torch.LongTensor:
        raise NotImplementedError

    def select_candidates(self, candidates: Candidates, generators: list[torch.Generator] | None = None) -> torch.LongTensor:
        """Select from a candidate set. Default: densify and call :meth:`select`."""
        return self.select(candidates.to_dense(), generators)

    def select_many(self, scores: torch.Tensor, n: int, generators: list[torch.Generator] | None = None) -> torch.LongTensor:
        """Pick ``n`` distinct columns per row of ``scores [B, N]``, best score first (what beam search needs).

        Selectors that cannot pick several tokens at once leave this out; beam search then refuses them.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Greedy(Selector):
    """Pick the most likely token; on ties the lowest token id (as ``torch.argmax``).

    Example:
        >>> Greedy().select(torch.tensor([[0.0, 2.0, 2.0]]))
        tensor([1])
    """

    def select(self, logits, generators=None):
        return first_argmax(logits)

    def select_candidates(self, candidates, generators=None):
        values, ids = candidates.values, candidates.ids
        at_max = values == values.amax(dim=-1, keepdim=True)
        return torch.where(at_max, ids, candidates.vocab_size).amin(dim=-1)

    def select_many(self, scores, n, generators=None):
        """The ``n`` best columns (``torch.topk``, as transformers' beam search)."""
        return torch.topk(scores, n, dim=-1).indices


def row_uniforms(
    rows: int, generators: list[torch.Generator] | None, device: torch.device | str | None = None
) -> torch.Tensor:
    """One uniform draw in [0, 1) per row (float64), each from that row's generator (the global RNG if None).

    Each row draws on its generator's own device, so a seed gives the same numbers wherever the logits live; the
    draws are then moved to ``device`` (default: where they were drawn; with no generators, the CPU's global RNG
    unless ``device`` is given).
    """
    if generators is None:
        return torch.rand(rows, dtype=torch.float64, device=device)
    _check_generators(generators, rows)
    draws = [torch.rand(1, dtype=torch.float64, generator=g, device=g.device) for g in generators]
    return torch.cat([draw.to(draws[0].device) for draw in draws]).to(device or draws[0].device)


def row_gumbels(shape: tuple[int, int], generators: list[torch.Generator] | None, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise ``[B, N]`` (float32) on ``device``, row i drawn from generator i (the global RNG if None).

    As :func:`row_uniforms`, each row draws on its generator's device; the noise is computed on ``device``.
    """
    rows, columns = shape
    if generators is None:
        uniforms = torch.rand(shape, device=device)
    else:
        _check_generators(generators, rows)
        draws = [torch.rand(columns, generator=g, device=g.device) for g in generators]
        uniforms = torch.stack([draw.to(device) for draw in draws])
    tiny = torch.finfo(torch.float32).tiny
    return -torch.log(-torch.log(uniforms.clamp(min=tiny)))


def _check_generators(generators: list[torch.Generator], rows: int) -> None:
    if len(generators) != rows:
        raise ValueError(f"got {len(generators)} generators for {rows} rows: pass one torch.Generator per row")


#: distance below a row's maximum past which a value's fixed-point weight is 0 for any vocabulary:
#: ``exp(-60) · 2^60 < 1e-8``, and the shift ``s`` of :func:`fixed_point_weights` is at most 60
ZERO_WEIGHT_BELOW = 60.0


def fixed_point_weights(values: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``exp(x − max x)`` of each row as int64 fixed-point numbers: ``floor(w · 2^s)``, ``s = 62 − bit_length(V)``.

    Integer sums are exact in any order and grouping, so a candidate set (absent tokens weigh 0) and its dense row
    give the same running sums; ``V`` weights of at most ``2^s`` each add up to less than ``2^62``. A weight below
    ``2^-s`` of the row's largest (``5.7e-14`` for a 152k vocabulary) counts as 0.

    Values more than :data:`ZERO_WEIGHT_BELOW` under the maximum weigh 0 at any ``s``, so they are raised to that
    floor before the ``exp``: the weights are the same, and ``exp`` of ``-inf`` or of a value whose result
    underflows takes a slow path (measured: 3.3× and 9× slower than finite values on 912k values).
    """
    shift = 62 - max(int(vocab_size), 2).bit_length()
    scaled = torch.sub(values, values.amax(dim=-1, keepdim=True)).clamp_(min=-ZERO_WEIGHT_BELOW)
    return scaled.exp_().mul_(2.0**shift).to(torch.int64)


def _inverse_cdf(values: torch.Tensor, uniforms: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
    """Column index drawn from softmax(values) per row by inverse transform over the columns in order.

    The pick is the first column whose running sum of :func:`fixed_point_weights` exceeds ``floor(u · total)``.
    Long rows find it in two levels (sums of blocks of 64 columns, see :func:`in_blocks`, then the chosen block), a few
    rows at a time. ``vocab_size`` is the row length the values stand for (default: their own).
    """
    rows, columns = values.shape
    slices = row_slices(rows, columns)
    if len(slices) > 1:
        return torch.cat([_inverse_cdf(values[at], uniforms[at], vocab_size) for at in slices])
    weights = fixed_point_weights(values, vocab_size or columns)
    if columns <= 7 * BLOCK:
        cumulative = weights.cumsum(dim=-1)
        target = _target(cumulative[:, -1:], uniforms)
        return torch.searchsorted(cumulative, target, right=True).squeeze(-1)
    padded = in_blocks(weights)
    block_ends = padded.sum(dim=-1).cumsum(dim=-1)
    target = _target(block_ends[:, -1:], uniforms)
    block = torch.searchsorted(block_ends, target, right=True)  # [B, 1]
    before = torch.where(block > 0, block_ends.gather(1, (block - 1).clamp(min=0)), 0)
    inside = padded.gather(1, block.unsqueeze(-1).expand(rows, 1, BLOCK)).squeeze(1).cumsum(dim=-1)
    return (block * BLOCK + torch.searchsorted(inside, target - before, right=True)).squeeze(-1)


def _target(total: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """``floor(u · total)`` per row ``[B, 1]`` (int64), below ``total``: the running sum to pass."""
    return torch.minimum(uniforms.unsqueeze(-1).mul(total).to(torch.int64), total - 1)


class Sample(Selector):
    """Draw a token from the softmax of the processed logits, with one generator per row.

    Example:
        >>> g = [torch.Generator().manual_seed(0)]
        >>> Sample().select(torch.tensor([[0.0, float("-inf"), 0.0]]), g).item() in (0, 2)
        True
    """

    def select(self, logits, generators=None):
        return _inverse_cdf(logits.float(), row_uniforms(logits.shape[0], generators, logits.device))

    def select_many(self, scores, n, generators=None):
        """``n`` columns drawn without replacement from softmax(scores) (Gumbel-top-k), sorted by score."""
        keys = scores.float() + row_gumbels(tuple(scores.shape), generators, scores.device)
        columns = torch.topk(keys, n, dim=-1).indices
        order = torch.sort(scores.gather(1, columns), dim=-1, descending=True, stable=True).indices
        return columns.gather(1, order)

    def select_candidates(self, candidates, generators=None):
        ids, order = torch.sort(candidates.ids, dim=-1)
        values = candidates.values.gather(1, order).float()
        column = _inverse_cdf(values, row_uniforms(values.shape[0], generators, values.device), candidates.vocab_size)
        return ids.gather(1, column.unsqueeze(-1)).squeeze(-1)
