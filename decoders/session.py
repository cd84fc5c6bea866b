"""The model session: a batch of left-padded rows, their attention mask and positions, and the KV cache.

Searches drive a model only through a :class:`ModelSession`:

* :meth:`~ModelSession.append` writes tokens at the end of every row;
* :meth:`~ModelSession.forward` runs the model over the columns it has not seen yet (the whole prompt the
  first time, then the new tokens) and returns their logits, and hidden states on request;
* :meth:`~ModelSession.select` keeps, reorders or repeats rows (beams fork and die, finished rows leave),
  the KV cache included;
* :meth:`~ModelSession.rewind` takes back the last columns of each row, a different number per row
  (speculative decoding's rejected drafts): columns every row gives up leave the buffer and the cache, the
  rest stay as *holes* that attention skips and positions do not count;
* :meth:`~ModelSession.add` lets new rows join a running batch (continuous batching): their prompts are run by
  the next :meth:`~ModelSession.forward`, beside the other rows' new tokens, and their KV cache joins the batch's;
  :meth:`~ModelSession.shift` widens or narrows every row's left padding so that rows of any length fit.

The session follows a :class:`~decoders.batch.Batch`'s events (:meth:`~ModelSession.update`); searches change
rows through the batch, never through the session directly, except for the tentative columns of a step
(speculative drafts, contrastive candidates) that only the model sees.

The model is called with keyword arguments only (``input_ids``, ``attention_mask``, ``position_ids``, the
KV cache, ``use_cache``, ``logits_to_keep``), whichever of them its ``forward`` names, so any causal LM with
that interface works, transformers or not. Nothing here assumes a device: buffers live on the model's.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from decoders.errors import GenerationError


def model_device(model: Any) -> torch.device:
    """The device of a model's parameters (its ``device`` attribute when it has one)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def crop_cache(cache: Any, removed: int) -> Any:
    """The cache without its last ``removed`` columns (a transformers ``Cache`` is changed in place)."""
    if hasattr(cache, "crop"):
        cache.crop(-removed)  # a negative count removes that many columns (transformers 4.x and 5.x alike)
        return cache
    if isinstance(cache, torch.Tensor):
        return cache[..., : cache.shape[-2] - removed, :]
    if isinstance(cache, tuple | list):
        return type(cache)(crop_cache(part, removed) for part in cache)
    if cache is None or isinstance(cache, int | float):  # nothing per column (e.g. a toy model's counter)
        return cache
    raise GenerationError(
        f"cannot take columns back from a KV cache of type {type(cache).__name__}: speculative decoding needs a "
        "transformers Cache (with crop), or tensors / tuples of tensors with the sequence second to last"
    )


def _cache_layers(cache: Any, what: str) -> list[Any]:
    """The layers of a transformers ``Cache`` whose ``keys``/``values`` are plain ``[B, H, T, D]`` tensors."""
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        raise GenerationError(
            f"cannot {what} a KV cache of type {type(cache).__name__}: requests joining a running batch need a "
            "transformers DynamicCache, or tensors / tuples of tensors shaped [batch, heads, columns, width]"
        )
    if any(getattr(layer, "is_sliding", False) for layer in layers):
        raise GenerationError(
            f"cannot {what} a sliding-window KV cache: requests joining a running batch need a full cache"
        )
    return list(layers)


def shift_cache(cache: Any, columns: int) -> Any:
    """The cache with ``columns`` empty columns added on the left (a negative count removes the first columns)."""
    if not columns or cache is None or isinstance(cache, int | float):
        return cache
    if isinstance(cache, torch.Tensor):
        if columns < 0:
            return cache[..., -columns:, :]
        return torch.nn.functional.pad(cache, (0, 0, columns, 0))
    if isinstance(cache, tuple | list):
        return type(cache)(shift_cache(part, columns) for part in cache)
    for layer in _cache_layers(cache, "shift the columns of"):
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys, layer.values = shift_cache(layer.keys, columns), shift_cache(layer.values, columns)
    return cache


def concat_caches(first: Any, second: Any) -> Any:
    """One cache holding the rows of ``first`` then those of ``second`` (both of the same number of columns)."""
    if first is None or isinstance(first, int | float):
        return second
    if isinstance(first, torch.Tensor):
        return torch.cat([first, second.to(first.device)], dim=0)
    if isinstance(first, tuple | list):
        return type(first)(concat_caches(a, b) for a, b in zip(first, second))
    layers = _cache_layers(first, "add rows to")
    for layer, other in zip(layers, _cache_layers(second, "add rows to")):
        layer.keys = torch.cat([layer.keys, other.keys], dim=0)
        layer.values = torch.cat([layer.values, other.values], dim=0)
    return first


def select_cache(cache: Any, rows: torch.LongTensor) -> Any:
    """The cache with its batch rows replaced by ``rows`` (a transformers ``Cache`` is changed in place)."""
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(rows)
        return cache
    if isinstance(cache, torch.Tensor):
        return cache.index_select(0, rows.to(cache.device))
    if isinstance(cache, tuple | list):
        return type(cache)(select_cache(part, rows) for part in cache)
    if cache is None or isinstance(cache, int | float):  # nothing per row (e.g. a toy model's counter)
        return cache
    raise GenerationError(
        f"cannot select rows of a KV cache of type {type(cache).__name__}: searches that fork or drop rows need a "
        "transformers Cache (with reorder_cache), or tensors / tuples of tensors with the batch first"
    )


@dataclass(frozen=True)
class ForwardOutput:
    """Logits (float32) of the new columns, and the last layer's hidden states when asked for.

    Args:
        logits: ``[R, V]`` for the last new column, or ``[R, k, V]`` for all ``k`` new columns.
        hidden: the last hidden layer, shaped like ``logits`` but ``H`` wide; None unless requested.
        layers: every layer's hidden states of the last new column (``[R, H]`` each; the embeddings' output
            first, then one per layer, as transformers' ``output_hidden_states`` gives them); None unless requested.
    """

    logits: torch.Tensor
    hidden: torch.Tensor | None = None
    layers: tuple[torch.Tensor, ...] | None = None


class _ModelCall:
    """Calls the model with the argument names its ``forward`` uses (looked up once, not per step)."""

    def __init__(self, model: Any):
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.cache_name = "cache" if "cache" in params else "past_key_values"
        self.takes_positions = "position_ids" in params
        self.keep_name = next((name for name in ("logits_to_keep", "num_logits_to_keep") if name in params), None)
        self.takes_hidden = "output_hidden_states" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
        )

    def __call__(self, input_ids, attention_mask, position_ids, cache, *, keep: int, hidden: bool, layers: bool = False):
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": True}
        if self.keep_name:
            kwargs[self.keep_name] = keep
        if self.takes_positions:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self.cache_name] = cache
        if hidden or layers:
            if not self.takes_hidden:
                raise GenerationError(
                    f"{type(self.model).__name__}.forward takes no output_hidden_states, which this search needs"
                )
            kwargs["output_hidden_states"] = True
        output = self.model(**kwargs)
        new_cache = getattr(output, "cache", None)
        if new_cache is None:
            new_cache = getattr(output, "past_key_values", None)
        if new_cache is None:
            raise GenerationError(
                f"{type(self.model).__name__} returned no KV cache for use_cache=True; generation feeds only the new "
                "tokens at each step and needs it: use a causal LM that supports caching"
            )
        states = tuple(output.hidden_states) if layers else output.hidden_states[-1] if hidden else None
        return output.logits, states, new_cache


class ModelSession:
    """A batch of rows fed to one model: token buffer, attention mask, positions and KV cache.

    Rows start as the left-padded prompts. Every row always has the same number of columns; a row's left
    padding is masked out of attention and does not advance its positions.

    Args:
        model: a causal LM (see the module docstring for the interface).
        prompt_ids: one list of token ids per row.
        pad_id: the id written into padding columns.
        capacity: how many tokens will be appended at most (the buffer grows if more come).

    Example:
        >>> session = ModelSession(model, [[5, 6, 7], [8]], pad_id=0, capacity=4)  # doctest: +SKIP
        >>> session.forward().logits.shape  # the prompts  # doctest: +SKIP
        torch.Size([2, 384])
        >>> session.append(torch.tensor([1, 2])); session.forward().logits.shape  # doctest: +SKIP
        torch.Size([2, 384])
    """

    def __init__(self, model: Any, prompt_ids: list[list[int]], pad_id: int, capacity: int):
        self.model = model
        self.device = model_device(model)
        self._call = _ModelCall(model)
        rows, width = len(prompt_ids), max(map(len, prompt_ids), default=0)
        self.prompt_width = width
        self.padding = [width - len(ids) for ids in prompt_ids]
        ids = torch.full((rows, width + capacity), pad_id, dtype=torch.long)
        for row, row_ids in enumerate(prompt_ids):
            ids[row, self.padding[row] : width] = torch.tensor(row_ids, dtype=torch.long)
        self.pad_id = pad_id
        self._ids = ids.to(self.device)
        self._pads = torch.tensor(self.padding, dtype=torch.long, device=self.device).unsqueeze(-1)
        self.length = width  # columns written
        self.computed = 0  # columns the cache holds
        self.cache: Any = None
        self._holes: torch.Tensor | None = None  # bool [R, columns]: taken-back columns that stay (see rewind)
        self._joined = rows  # rows from this one on joined after the last forward: their prompts are not run yet

    @property
    def rows(self) -> int:
        return self._ids.shape[0]

    def update(self, event: Any) -> None:
        """Follow a :class:`~decoders.batch.Batch` event: rows selected, added, or shifted."""
        from decoders.batch import RowsAdded, RowsSelected, RowsWidened

        if isinstance(event, RowsSelected):
            self.select(event.indices)
        elif isinstance(event, RowsAdded):
            self.add([row.prompt_ids for row in event.rows])
        elif isinstance(event, RowsWidened):
            self.shift(event.columns)

    def add(self, prompt_ids: list[list[int]]) -> None:
        """New rows join after the last row; the next :meth:`forward` runs their prompts.

        Each prompt is left-padded to the batch's :attr:`length`, which must be at least as long (widen the batch
        first with :meth:`shift`).
        """
        width = max(map(len, prompt_ids))
        if width > self.length:
            raise GenerationError(f"a joining prompt of {width} tokens is longer than the batch ({self.length} columns)")
        self._joined = min(self._joined, self.rows)
        new = torch.full((len(prompt_ids), self._ids.shape[1]), self.pad_id, dtype=torch.long, device=self.device)
        padding = [self.length - len(ids) for ids in prompt_ids]
        for row, row_ids in enumerate(prompt_ids):
            new[row, padding[row] : self.length] = torch.tensor(row_ids, dtype=torch.long)
        self._ids = torch.cat([self._ids, new])
        self._pads = torch.cat([self._pads, torch.tensor(padding, dtype=torch.long, device=self.device).unsqueeze(-1)])
        self.padding = self.padding + padding
        if self._holes is not None:
            self._holes = torch.cat([self._holes, self._holes.new_zeros((len(prompt_ids), self._holes.shape[1]))])

    def shift(self, columns: int) -> None:
        """Give every row ``columns`` more columns of left padding (negative: remove columns all rows pad)."""
        if not columns:
            return
        if columns < 0 and -columns > min(self.padding, default=0):
            raise GenerationError(f"cannot remove {-columns} columns of padding: a row has only {min(self.padding)}")
        if columns > 0:
            self._ids = torch.nn.functional.pad(self._ids, (columns, 0), value=self.pad_id)
            if self._holes is not None:
                self._holes = torch.nn.functional.pad(self._holes, (columns, 0))
        else:
            self._ids = self._ids[:, -columns:]
            if self._holes is not None:
                self._holes = self._holes[:, -columns:]
        self._pads = self._pads + columns
        self.padding = [pad + columns for pad in self.padding]
        self.length += columns
        self.prompt_width += columns
        if self.computed:
            self.computed += columns
            self.cache = shift_cache(self.cache, columns)

    @property
    def common_padding(self) -> int:
        """How many leading columns every row pads (they can go: :meth:`shift` with minus this)."""
        return min(self.padding, default=0)

    @property
    def ids(self) -> torch.LongTensor:
        """The written columns of every row ``[R, length]`` (a view: do not modify)."""
        return self._ids[:, : self.length]

    def append(self, tokens: torch.LongTensor) -> None:
        """Write ``tokens`` (``[R]`` or ``[R, k]``) after every row's last column; the model sees them at the next :meth:`forward`."""
        tokens = tokens.view(self.rows, -1)
        end = self.length + tokens.shape[1]
        if end > self._ids.shape[1]:
            more = torch.full((self.rows, end - self._ids.shape[1]), self.pad_id, dtype=torch.long, device=self.device)
            self._ids = torch.cat([self._ids, more], dim=1)
        self._ids[:, self.length : end] = tokens
        if self._holes is not None and end > self._holes.shape[1]:
            self._holes = torch.nn.functional.pad(self._holes, (0, self._ids.shape[1] - self._holes.shape[1]))
        self.length = end

    def rewind(self, counts: list[int]) -> None:
        """Take back the last ``counts[i]`` columns of row ``i`` (appended, whether the model saw them or not).

        The columns every row gives up leave the buffer and the KV cache; a row's other taken-back columns stay
        as holes, masked from attention and skipped by positions, so each row continues as if they had never
        been there.
        """
        if len(counts) != self.rows:
            raise GenerationError(f"rewind got {len(counts)} counts for {self.rows} rows")
        common = min(counts)
        if common:
            self.length -= common
            if self.computed > self.length:
                if self.cache is not None:
                    self.cache = crop_cache(self.cache, self.computed - self.length)
                self.computed = self.length
        if any(count > common for count in counts):
            if self._holes is None:
                self._holes = torch.zeros(self._ids.shape, dtype=torch.bool, device=self.device)
            for row, count in enumerate(counts):
                if count > common:
                    self._holes[row, self.length - (count - common) : self.length] = True
        if self._holes is not None:
            self._holes[:, self.length :] = False

    def _mask(self, columns: torch.Tensor) -> torch.Tensor | None:
        if self._holes is not None:
            return ((columns >= self._pads) & ~self._holes[:, : self.length]).long()
        if not any(self.padding):
            return None
        return (columns >= self._pads).long()

    def _positions(self, columns: torch.Tensor, mask: torch.Tensor | None, start: int) -> torch.Tensor:
        """Positions of the columns from ``start`` on: the number of text columns before each (padding and holes
        not counted)."""
        if self._holes is None:
            return (columns[:, start:] - self._pads).clamp(min=0)
        return (mask.cumsum(dim=-1)[:, start:] - 1).clamp(min=0)

    def forward(
        self, *, all_logits: bool = False, hidden: bool = False, all_hidden: bool = False, layers: bool = False
    ) -> ForwardOutput:
        """Run the model over the columns it has not seen; logits of the last one (of all of them with ``all_logits``).

        Rows that joined since the last forward have their whole prompt run (in a pass of their own, whose KV cache
        then joins the batch's); the other rows their new columns.

        Args:
            all_logits: return ``[R, k, V]`` for the ``k`` new columns instead of ``[R, V]`` for the last.
            hidden: also return the last layer's hidden states of the columns whose logits are returned.
            all_hidden: return the last layer's hidden states of all ``k`` new columns ``[R, k, H]``, whatever
                ``all_logits`` says.
            layers: return every layer's hidden states of the last new column (:attr:`ForwardOutput.layers`), for
                searches that read the model's early layers (DoLa); not with ``hidden``/``all_hidden``.
        """
        joined = self._joined
        if self.computed >= self.length and joined >= self.rows:
            raise GenerationError("nothing new to run the model on: append tokens first")
        keep, with_states = 0 if all_logits else 1, hidden or all_hidden
        if layers and with_states:
            raise GenerationError("forward takes layers=True or hidden/all_hidden, not both")
        columns = torch.arange(self.length, device=self.device).unsqueeze(0)
        mask = self._mask(columns)
        options = {"keep": keep, "hidden": with_states, "layers": layers}
        if 0 < joined < self.rows:  # the rows that were there run their new columns, the joined rows their prompts
            if all_logits or with_states or layers:
                raise GenerationError("rows that joined a running batch get the last column's logits only")
            old = self._run(slice(0, joined), columns, mask, self.computed, self.cache, options)
            new = self._run(slice(joined, None), columns, mask, 0, None, options)
            logits = torch.cat([old[0][:, -1], new[0][:, -1]]).float()
            self.cache = concat_caches(old[2], new[2])
            self.computed, self._joined = self.length, self.rows
            return ForwardOutput(logits)
        start = 0 if joined == 0 else self.computed
        logits, states, self.cache = self._run(slice(None), columns, mask, start, None if start == 0 else self.cache, options)
        new = self.length - start
        self.computed, self._joined = self.length, self.rows
        logits = logits[:, -new:].float() if all_logits else logits[:, -1].float()
        if layers:
            return ForwardOutput(logits, layers=tuple(layer[:, -1] for layer in states))
        if states is not None:
            states = states[:, -new:] if all_hidden or all_logits else states[:, -1]
        return ForwardOutput(logits, states)

    def _run(self, rows: slice, columns, mask, start: int, cache: Any, options: dict) -> tuple:
        """The model over columns ``start…`` of batch rows ``rows``: ``(logits, states, cache)``. Without a cache,
        rows that repeat an earlier row's prompt share one pass over it."""
        positions = self._positions(columns, mask, start)[rows]
        mask = None if mask is None else mask[rows]
        if start == 0 and mask is not None and bool(mask.all()):  # unpadded prompts run as they would alone
            mask = None
        ids = self._ids[rows, start : self.length]
        shared = self._shared_prompts(rows) if cache is None else None
        if shared is not None:  # the model reads each distinct prompt once; its rows share the result
            first, copies = shared
            logits, states, new_cache = self._call(
                ids[first], None if mask is None else mask[first], positions[first], None, **options
            )
            try:
                new_cache = select_cache(new_cache, copies)
            except GenerationError:  # a cache whose rows cannot be copied: read every row's prompt instead
                shared = None
            else:
                logits = logits.index_select(0, copies)
                if isinstance(states, tuple):
                    states = tuple(layer.index_select(0, copies) for layer in states)
                elif states is not None:
                    states = states.index_select(0, copies)
        if shared is None:
            logits, states, new_cache = self._call(ids, mask, positions, cache, **options)
        return logits, states, new_cache

    def _shared_prompts(self, rows: slice) -> tuple[torch.LongTensor, torch.LongTensor] | None:
        """For rows (of ``rows``) that repeat an earlier row's prompt: the first row of each distinct prompt, and for
        every row the index of its prompt among them; None when every row's prompt is its own."""
        seen: dict[tuple[int, tuple[int, ...]], int] = {}  # (padding, columns): a pad id may also be a prompt's token
        first: list[int] = []
        copies: list[int] = []
        for row, (pad, columns) in enumerate(zip(self.padding[rows], self.ids[rows].tolist())):
            index = seen.setdefault((pad, tuple(columns)), len(seen))
            if index == len(first):
                first.append(row)
            copies.append(index)
        if len(first) == len(copies):
            return None
        return torch.tensor(first, device=self.device), torch.tensor(copies, device=self.device)

    def select(self, rows: torch.LongTensor | list[int]) -> None:
        """Keep rows ``rows`` in that order: row i continues old row ``rows[i]`` (may repeat or drop rows)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        if rows.shape[0] == self.rows and bool((rows == torch.arange(self.rows, device=self.device)).all()):
            return
        if self._joined < self.rows:
            raise GenerationError("rows changed before the prompts of the rows that joined were run: forward first")
        self._ids = self._ids.index_select(0, rows)
        self._pads = self._pads.index_select(0, rows)
        if self._holes is not None:
            self._holes = self._holes.index_select(0, rows)
        self.padding = [self.padding[r] for r in rows.tolist()]
        if self.cache is not None:
            self.cache = select_cache(self.cache, rows)
        self._joined = self.rows
        if not self.padding:  # no rows left: the next rows start afresh
            self._ids = self._ids[:, :0]
            self.length = self.computed = self.prompt_width = 0
            self.cache, self._holes, self._joined = None, None, 0
