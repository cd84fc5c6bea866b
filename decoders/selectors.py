"""Selectors: the last link of a chain, turning processed logits into one token id per row.

``sample`` draws by inverse transform in token-id order with one uniform number per row from that row's
generator. Tokens outside a candidate set weigh exactly zero, and adding zero leaves a running sum
unchanged, so the dense path and the candidate path pick the same token from the same draw.
"""

from __future__ import annotations

import torch

from decoders.processors.base import Candidates, Component
from decoders.processors.selection import first_argmax


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


def _inverse_cdf(values: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Column index drawn from softmax(values) per row by inverse transform over the columns in order."""
    weights = torch.exp(values - values.amax(dim=-1, keepdim=True))
    cumulative = weights.cumsum(dim=-1, dtype=torch.float64)
    total = cumulative[:, -1:].contiguous()
    pick = torch.searchsorted(cumulative, (uniforms.unsqueeze(-1) * total).contiguous(), right=True)
    last_positive = torch.searchsorted(cumulative, total, right=False)
    return torch.minimum(pick, last_positive).squeeze(-1)


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
        column = _inverse_cdf(values, row_uniforms(values.shape[0], generators, values.device))
        return ids.gather(1, column.unsqueeze(-1)).squeeze(-1)
