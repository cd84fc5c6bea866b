"""Finding the largest values of long rows fast, and shortening rows without changing float results.

``largest(logits, width)`` finds each row's ``width`` largest values with one read of the row: the maximum of
every block of 64 values, then the blocks with the ``width`` largest maxima — every one of the row's ``width``
largest values lies in them (each of those blocks holds a value at least as large as anything outside them).

``aligned_row(...)`` shortens a row that is ``-inf`` but for a few values while keeping each value's place
modulo 64. torch's CPU softmax adds a row's exponentials in vector lanes, block by block; a ``-inf`` adds an
exact zero, so dropping whole all-``-inf`` blocks leaves every lane's sum, and so every probability and every
cumulative sum, bit-for-bit unchanged. The tests compare both paths on random rows to keep this honest.
"""

from __future__ import annotations

import torch

from decoders.processors.base import NEG_INF

BLOCK = 64


def largest(logits: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``width`` largest values, sorted descending, and their column indices: ``[B, width]`` each.

    The multiset of values equals ``torch.topk(logits, width).values``; among equal values at the boundary the
    indices may differ from ``torch.topk``'s choice, so callers must treat a tie with the last value as unknown.
    """
    rows, vocab_size = logits.shape
    blocks = vocab_size // BLOCK
    if blocks < 4 * width:
        return torch.topk(logits, width, dim=-1)
    body = logits[:, : blocks * BLOCK].reshape(rows, blocks, BLOCK)
    best_blocks = torch.topk(body.amax(dim=-1), width, dim=-1, sorted=False).indices
    offsets = torch.arange(BLOCK, device=logits.device)
    pool_ids = (best_blocks.unsqueeze(-1) * BLOCK + offsets).reshape(rows, width * BLOCK)
    pool = logits.gather(1, pool_ids)
    if blocks * BLOCK < vocab_size:
        tail_ids = torch.arange(blocks * BLOCK, vocab_size, device=logits.device).expand(rows, -1)
        pool = torch.cat([pool, logits[:, blocks * BLOCK :]], dim=1)
        pool_ids = torch.cat([pool_ids, tail_ids], dim=1)
    values, where = torch.topk(pool, width, dim=-1)
    return values, pool_ids.gather(1, where)


def first_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=-1)`` (the first index of the maximum) with one blocked read of each row."""
    rows, vocab_size = logits.shape
    blocks = vocab_size // BLOCK
    if blocks < 16 or blocks * BLOCK != vocab_size or logits.dtype.is_complex:
        return logits.argmax(dim=-1)
    body = logits.reshape(rows, blocks, BLOCK)
    block_max = body.amax(dim=-1)
    row_max = block_max.amax(dim=-1, keepdim=True)
    first_block = (block_max == row_max).to(torch.uint8).argmax(dim=-1)
    block = body[torch.arange(rows, device=logits.device), first_block]
    if not bool(torch.isfinite(row_max).all()):
        return logits.argmax(dim=-1)  # NaN/inf: torch's own rule for which index wins
    return first_block * BLOCK + (block == row_max).to(torch.uint8).argmax(dim=-1)


def aligned_length(count: int, vocab_size: int) -> int:
    """The shortest row length ≥ ``count`` that is congruent to ``vocab_size`` modulo the block size."""
    remainder = vocab_size % BLOCK
    if count <= remainder:
        return min(remainder, vocab_size) or min(BLOCK, vocab_size)
    return min(remainder + BLOCK * -(-(count - remainder) // BLOCK), vocab_size)


def aligned_tail_row(values: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A short row ending in ``values`` [B, k] and ``-inf`` before them, standing for a ``vocab_size``-long one."""
    rows, width = values.shape
    length = aligned_length(width, vocab_size)
    row = values.new_full((rows, length), NEG_INF)
    row[:, length - width :] = values
    return row


def aligned_scatter(values: torch.Tensor, ids: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A short row holding ``values`` at columns whose place modulo 64 and order match ``ids`` in the full row.

    Returns the row ``[B, L]`` (``-inf`` elsewhere) and each value's column in it ``[B, k]``. The full row's
    last ``vocab_size % 64`` columns (a partial block) stay the short row's last columns.
    """
    rows, width = ids.shape
    full_blocks = vocab_size // BLOCK
    block = torch.div(ids, BLOCK, rounding_mode="floor")
    in_tail = block >= full_blocks
    order_key = torch.where(in_tail, full_blocks, block)
    sorted_key, order = torch.sort(order_key, dim=-1)
    new_block = torch.zeros_like(sorted_key)
    new_block[:, 1:] = (sorted_key[:, 1:] != sorted_key[:, :-1]).long().cumsum(dim=-1)
    rank = torch.empty_like(new_block).scatter_(1, order, new_block)
    used_blocks = int(torch.where(in_tail, 0, rank + 1).max()) if width else 0
    tail = vocab_size - full_blocks * BLOCK
    length = used_blocks * BLOCK + tail
    columns = torch.where(in_tail, used_blocks * BLOCK + (ids - full_blocks * BLOCK), rank * BLOCK + ids % BLOCK)
    row = values.new_full((rows, length), NEG_INF)
    return row.scatter_reduce(1, columns, values, reduce="amax"), columns
