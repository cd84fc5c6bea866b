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

import functools
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
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


def in_blocks(values: torch.Tensor) -> torch.Tensor:
    """``[B, V]`` as ``[B, ⌈V / 64⌉, 64]`` blocks of consecutive columns, the last one padded with zeros (a view
    when 64 divides ``V``; for sums of non-negative weights per block)."""
    rows, columns = values.shape
    blocks = -(-columns // BLOCK)
    if columns % BLOCK:
        values = torch.nn.functional.pad(values, (0, blocks * BLOCK - columns))
    return values.view(rows, blocks, BLOCK)


def first_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=-1)`` (the first index of the maximum) with one blocked read of each row on the CPU.

    Elsewhere (and for short rows) it is ``argmax`` itself, which needs no host synchronisation.
    """
    rows, vocab_size = logits.shape
    blocks = vocab_size // BLOCK
    if logits.device.type != "cpu" or blocks < 16 or blocks * BLOCK != vocab_size or logits.dtype.is_complex:
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


#: buckets per row of the histogram :func:`mass_cut` locates the cut with
MASS_BUCKETS = 2048
#: values per group of rows in :func:`row_slices` (4 MB of float32). A temporary of many
#: megabytes is mapped fresh from the system on every call and costs a page fault per 4 kB on first touch (measured
#: on a 64 × 152k step: 40 ms per full-size temporary); a slice's temporaries come from a :class:`Scratch`. Slices
#: of 2^19 or 2^18 values were slower (top-p on 64 × 152k: 134 and 180-215 ms against 91-111 ms)
CHUNK_VALUES = 1 << 20


class Scratch:
    """Named buffers for a row rule's temporaries, reused from one slice of rows (see :func:`row_slices`) and one
    call to the next.

    A temporary of a few megabytes that the allocator returns to the system when freed costs a page fault per
    4 kB each time it is made again (about 2 µs each here: ~4 ms per 8 MB); glibc returns freed memory at the top
    of its heap once more than twice its largest recent block is free, which a slice's temporaries together are.
    A buffer is overwritten by the next ``take`` of its name, so nothing taken may outlive the slice it serves.

    Example:
        >>> scratch = Scratch()
        >>> a = scratch.take("probs", (2, 3), torch.float32)
        >>> scratch.take("probs", (1, 3), torch.float32).data_ptr() == a.data_ptr()
        True
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape``, the same memory as the last one taken under ``name``."""
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype or buffer.device != torch.device(device):
            buffer = self._buffers[name] = torch.empty(size, dtype=dtype, device=device)
        return buffer[:size].view(shape)


_thread_local = threading.local()


def thread_scratch() -> Scratch:
    """This thread's :class:`Scratch`, kept for the thread's life: each buffer holds one slice of rows
    (:data:`CHUNK_VALUES` values, or one row where a row is longer), ~50 MB in all once top-p and typical-p have run
    on large batches (measured: 48.7 MB after both on 64 × 152064). Each thread has its own, so concurrent calls
    do not share buffers."""
    if not hasattr(_thread_local, "scratch"):
        _thread_local.scratch = Scratch()
    return _thread_local.scratch


@functools.cache
def _sort_pool(workers: int, process_id: int) -> ThreadPoolExecutor:
    """Threads for :func:`sort_rows_in_place`, one pool per process (a forked child does not inherit threads)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decoders-sort")


def sort_rows_in_place(array: np.ndarray) -> None:
    """Sort each row of a 2-D NumPy array in place, rows split over torch's intra-op threads (NumPy's sort
    releases the GIL; it runs on one core otherwise)."""
    workers = min(torch.get_num_threads(), len(array))
    if workers < 2:
        array.sort(axis=-1)
        return
    bounds = np.linspace(0, len(array), workers + 1).astype(int)
    pool = _sort_pool(workers, os.getpid())
    list(pool.map(lambda start, stop: array[start:stop].sort(axis=-1), bounds[:-1], bounds[1:]))


def mass_cut(
    keys: torch.Tensor, weights: torch.Tensor, share: float, band: float, low: torch.Tensor, high: torch.Tensor,
    scratch: Scratch | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each row's weight, summed in ascending order of ``keys``, reaches ``share`` of the row's total weight
    (the target) — without sorting the row.

    A histogram of the weights over :data:`MASS_BUCKETS` buckets of key values between ``low`` and ``high``
    (keys outside go to the end buckets) locates the bucket holding the crossing; only that bucket's tokens are
    gathered and sorted. The sums are exact-arithmetic estimates (float32 weights added in float64), so a crossing
    counts as found only where the running sums before and through the group of equal keys at the crossing are
    more than ``band`` of the target away from it.

    Args:
        keys: ``[B, V]`` float, no NaN.
        weights: ``[B, V]`` non-negative float (float64 is used as it is, others are copied to float64).
        share: the fraction of each row's total weight to reach.
        band: the distance from the target that the sums must keep, as a fraction of the target.
        low, high: ``[B, 1]`` the key range the buckets span.
        scratch: where the ``[B, V]`` temporaries come from (default: fresh ones).

    Returns:
        ``value``: ``[B, 1]`` the key of the group of equal keys in which the running sum reaches the target;
        ``found``: ``[B]`` bool, whether that is certain (rows where it is not have an arbitrary ``value``);
        ``size``: ``[B]`` how many tokens share that key.
    """
    rows, vocab_size = keys.shape
    scratch = scratch or Scratch()
    take = lambda name, dtype: scratch.take(f"mass_cut.{name}", keys.shape, dtype, keys.device)  # noqa: E731
    scale = MASS_BUCKETS / (high - low).clamp(min=1e-30)  # finite even when every key is equal
    position = torch.sub(keys, low, out=take("position", keys.dtype)).mul_(scale).clamp_(0, MASS_BUCKETS - 1)
    bucket = take("bucket", torch.int64).copy_(position)  # truncates, as .to(torch.int64)
    if weights.dtype != torch.float64:
        weights = take("weights", torch.float64).copy_(weights)
    # float64 buckets: each adds weights one by one in float64, far more precisely than any band
    histogram = keys.new_zeros(rows, MASS_BUCKETS, dtype=torch.float64).scatter_add_(1, bucket, weights)
    running = histogram.cumsum(dim=-1)
    target = share * running[:, -1]  # the row's total weight, from its buckets
    band = band * target
    crossing = (running < target.unsqueeze(-1)).sum(dim=-1, keepdim=True).clamp(max=MASS_BUCKETS - 1)
    # a crossing group lighter than twice the band cannot be clear of it: gather nothing for such rows
    possible = histogram.gather(1, crossing) > band.unsqueeze(-1) * 1.5
    below = torch.where(crossing > 0, running.gather(1, (crossing - 1).clamp(min=0)), 0).squeeze(-1)  # buckets before
    in_crossing = torch.eq(bucket, crossing.masked_fill(~possible, -1), out=take("in_crossing", torch.bool))
    row, column = in_crossing.nonzero(as_tuple=True)
    counts = torch.bincount(row, minlength=rows)
    width = max(int(counts.max()) if rows else 0, 1)
    place = torch.arange(row.numel(), device=keys.device) - (counts.cumsum(0) - counts)[row]
    bucket_keys = keys.new_full((rows, width), float("inf")).index_put_((row, place), keys[row, column])
    bucket_keys, order = bucket_keys.sort(dim=-1)
    bucket_weights = weights.new_zeros(rows, width).index_put_((row, place), weights[row, column])
    bucket_weights = bucket_weights.gather(1, order).double()
    running = below.unsqueeze(-1) + bucket_weights.cumsum(dim=-1)
    reached = (running < target.unsqueeze(-1)).sum(dim=-1, keepdim=True).clamp(max=counts.clamp(min=1).unsqueeze(-1) - 1)
    value = bucket_keys.gather(1, reached)
    before = below + torch.where(bucket_keys < value, bucket_weights, 0).sum(dim=-1)
    through = before + torch.where(bucket_keys == value, bucket_weights, 0).sum(dim=-1)
    found = possible.squeeze(-1) & (counts > 0) & (before < target - band) & (through > target + band)
    return value, found, (bucket_keys == value).sum(dim=-1)


def sorted_values(values: torch.Tensor) -> torch.Tensor:
    """Each row of a CPU tensor sorted ascending, values only (NumPy's vectorised sort: no index permutation)."""
    ascending = values.numpy().copy()
    sort_rows_in_place(ascending)
    return torch.from_numpy(ascending)


def row_slices(rows: int, vocab_size: int) -> list[slice]:
    """``range(rows)`` as consecutive slices of at most :data:`CHUNK_VALUES` values (for row-by-row rules)."""
    step = max(1, CHUNK_VALUES // max(vocab_size, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def take_rows(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``tensor[rows]``: a view when the rows are consecutive (as they are unless some row is left out), else a copy."""
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == rows.numel():
        return tensor[first : last + 1]
    return tensor[rows]


def sorted_by_key(
    keys: torch.Tensor, values: torch.Tensor, scratch: Scratch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``values`` in ascending order of its non-negative float32 ``keys`` (CPU), with the sorted keys.

    Sorts one int64 per token (the key's bits above the value's), so no index permutation is built; among equal
    keys the values come in the order of their bits. Both results are strided views of the sorted words (taken
    from ``scratch`` when given).
    """
    packed = (scratch or Scratch()).take("sorted_by_key.packed", tuple(keys.shape), torch.int64).numpy()
    words = packed.view(np.uint32)  # two per token, the low one first on a little-endian machine
    first, second = slice(0, None, 2), slice(1, None, 2)
    high, low = (second, first) if sys.byteorder == "little" else (first, second)
    words[:, high] = keys.numpy().view(np.uint32)
    words[:, low] = values.numpy().view(np.uint32)
    sort_rows_in_place(packed)
    halves = packed.view(np.float32)
    return torch.from_numpy(halves[:, high]), torch.from_numpy(halves[:, low])
