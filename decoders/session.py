"""The model session: a batch of left-padded rows, their attention mask and positions, and the KV cache.

Searches drive a model only through a :class:`ModelSession`:

* :meth:`~ModelSession.append` writes tokens at the end of every row;
* :meth:`~ModelSession.forward` runs the model over the columns it has not seen yet (the whole prompt the
  first time, then the new tokens) and returns their logits, and hidden states on request;
* :meth:`~ModelSession.select` keeps, reorders or repeats rows (beams fork and die, finished rows leave),
  the KV cache included;
* :meth:`~ModelSession.rewind` takes back the last columns of each row, a different number per row
  (speculative decoding's rejected drafts): columns every row gives up leave the buffer and the cache, the
  rest stay as *holes* that attention skips and positions do not count.

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
    """

    logits: torch.Tensor
    hidden: torch.Tensor | None = None


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

    def __call__(self, input_ids, attention_mask, position_ids, cache, *, keep: int, hidden: bool):
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": True}
        if self.keep_name:
            kwargs[self.keep_name] = keep
        if self.takes_positions:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self.cache_name] = cache
        if hidden:
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
        states = output.hidden_states[-1] if hidden else None
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
        rows, width = len(prompt_ids), max(map(len, prompt_ids))
        self.prompt_width = width
        self.padding = [width - len(ids) for ids in prompt_ids]
        ids = torch.full((rows, width + capacity), pad_id, dtype=torch.long)
        for row, row_ids in enumerate(prompt_ids):
            ids[row, self.padding[row] : width] = torch.tensor(row_ids, dtype=torch.long)
        self.pad_id = pad_id
        self._ids = ids.to(self.device)
        self._pads = torch.tensor(self.padding, device=self.device).unsqueeze(-1)
        self.length = width  # columns written
        self.computed = 0  # columns the cache holds
        self.cache: Any = None
        self._holes: torch.Tensor | None = None  # bool [R, columns]: taken-back columns that stay (see rewind)

    @property
    def rows(self) -> int:
        return self._ids.shape[0]

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

    def _positions(self, columns: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Positions of the new columns: the number of text columns before each (padding and holes not counted)."""
        if self._holes is None:
            return (columns[:, self.computed :] - self._pads).clamp(min=0)
        return (mask.cumsum(dim=-1)[:, self.computed :] - 1).clamp(min=0)

    def forward(self, *, all_logits: bool = False, hidden: bool = False, all_hidden: bool = False) -> ForwardOutput:
        """Run the model over the columns it has not seen; logits of the last one (of all of them with ``all_logits``).

        Args:
            all_logits: return ``[R, k, V]`` for the ``k`` new columns instead of ``[R, V]`` for the last.
            hidden: also return the last layer's hidden states of the columns whose logits are returned.
            all_hidden: return the last layer's hidden states of all ``k`` new columns ``[R, k, H]``, whatever
                ``all_logits`` says.
        """
        if self.computed >= self.length:
            raise GenerationError("nothing new to run the model on: append tokens first")
        columns = torch.arange(self.length, device=self.device).unsqueeze(0)
        mask = self._mask(columns)
        ids, positions = self._ids[:, self.computed : self.length], self._positions(columns, mask)
        keep, with_states = 0 if all_logits else 1, hidden or all_hidden
        shared = self._shared_prompts() if self.cache is None else None
        if shared is not None:  # the model reads each distinct prompt once; its rows share the result
            first, copies = shared
            logits, states, cache = self._call(
                ids[first], None if mask is None else mask[first], positions[first], None, keep=keep, hidden=with_states
            )  # fmt: skip
            try:
                self.cache = select_cache(cache, copies)
            except GenerationError:  # a cache whose rows cannot be copied: read every row's prompt instead
                shared = None
            else:
                logits = logits.index_select(0, copies)
                states = None if states is None else states.index_select(0, copies)
        if shared is None:
            logits, states, self.cache = self._call(ids, mask, positions, self.cache, keep=keep, hidden=with_states)
        new = self.length - self.computed
        self.computed = self.length
        if states is not None:
            states = states[:, -new:] if all_hidden or all_logits else states[:, -1]
        return ForwardOutput(logits[:, -new:].float() if all_logits else logits[:, -1].float(), states)

    def _shared_prompts(self) -> tuple[torch.LongTensor, torch.LongTensor] | None:
        """For rows that repeat an earlier row's prompt: the first row of each distinct prompt, and for every row
        the index of its prompt among them; None when every row's prompt is its own."""
        seen: dict[tuple[int, tuple[int, ...]], int] = {}  # (padding, columns): a pad id may also be a prompt's token
        first: list[int] = []
        copies: list[int] = []
        for row, (pad, columns) in enumerate(zip(self.padding, self.ids.tolist())):
            index = seen.setdefault((pad, tuple(columns)), len(seen))
            if index == len(first):
                first.append(row)
            copies.append(index)
        if len(first) == self.rows:
            return None
        return torch.tensor(first, device=self.device), torch.tensor(copies, device=self.device)

    def select(self, rows: torch.LongTensor | list[int]) -> None:
        """Keep rows ``rows`` in that order: row i continues old row ``rows[i]`` (may repeat or drop rows)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        if rows.shape[0] == self.rows and bool((rows == torch.arange(self.rows, device=self.device)).all()):
            return
        self._ids = self._ids.index_select(0, rows)
        self._pads = self._pads.index_select(0, rows)
        if self._holes is not None:
            self._holes = self._holes.index_select(0, rows)
        self.padding = [self.padding[r] for r in rows.tolist()]
        if self.cache is not None:
            self.cache = select_cache(self.cache, rows)
