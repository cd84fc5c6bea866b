"""The processor contract, the candidate-set representation, and the per-generation context.

A processor maps ``(input_ids [B, T], logits [B, V]) -> logits [B, V]`` out of place. Removed tokens are
``-inf``; every row keeps at least one finite value. Processors may also work on a *candidate set*: the
``[B, k]`` values and token ids of the only tokens that can still be chosen (every other token is ``-inf``).
Working on candidates instead of the whole vocabulary is where decoders gets its speed; the dense result
(``Candidates.to_dense``) is the same as running the dense path.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, field
from typing import Any

import torch

from decoders.events import RowsAdded, RowsFinished, RowsRewound, RowsSelected, RowsWidened, TokensAccepted

#: the value of a removed token
NEG_INF = float("-inf")


def check_parameter(ok: bool, name: str, value: Any, rule: str, advice: str = "") -> None:
    """Raise ``ValueError("<name> must be <rule>, got <value>; <advice>")`` unless ``ok``.

    Processor constructors call it so that a bad value fails when the chain is built, not mid-generation.
    """
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}" + (f"; {advice}" if advice else ""))


def is_real(value: Any) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any, minimum: int) -> bool:
    """An integer (Python or NumPy, not a bool) of at least ``minimum``."""
    if isinstance(value, bool):
        return False
    try:
        return operator.index(value) >= minimum
    except TypeError:
        return False


@dataclass(frozen=True)
class Candidates:
    """The tokens still in play for each row: values and token ids, shape ``[B, k]`` each.

    Entries that are ``-inf`` are padding (removed tokens). A row's ids are distinct among its finite
    entries; padding entries may repeat an id (they never outweigh a real entry: see :meth:`to_dense`).
    ``sorted_desc`` records that values are sorted in descending order along each row, which truncations
    use to avoid sorting again.

    Args:
        values: candidate logits ``[B, k]``.
        ids: token ids of the candidates ``[B, k]`` (int64).
        vocab_size: size ``V`` of the full vocabulary, for :meth:`to_dense`.
        sorted_desc: whether ``values`` are sorted descending along the last dimension.
    """

    values: torch.Tensor
    ids: torch.Tensor
    vocab_size: int
    sorted_desc: bool = False

    def to_dense(self) -> torch.Tensor:
        """The ``[B, V]`` logits this candidate set stands for (``-inf`` outside the set)."""
        dense = self.values.new_full((self.values.shape[0], self.vocab_size), float("-inf"))
        return dense.scatter_reduce(1, self.ids, self.values, reduce="amax")

    def log_probs(self, token_ids: torch.LongTensor) -> torch.Tensor:
        """Log-probabilities ``[B, m]`` of ``token_ids [B, m]`` under the softmax of this set (``-inf`` outside it)."""
        values = self.values.float()
        norm = torch.logsumexp(values, dim=-1, keepdim=True)
        hits = self.ids.unsqueeze(1) == token_ids.unsqueeze(-1)  # [B, m, k]
        found = torch.where(hits, values.unsqueeze(1), float("-inf")).amax(dim=-1)
        return found - norm

    def with_values(self, values: torch.Tensor, *, still_sorted: bool = False) -> "Candidates":
        """The same tokens with new values (sorted order is kept only if the caller says so)."""
        return Candidates(values, self.ids, self.vocab_size, self.sorted_desc and still_sorted)

    def sorted(self) -> "Candidates":
        """This set with values in descending order (no work if already sorted)."""
        if self.sorted_desc:
            return self
        values, order = torch.sort(self.values, dim=-1, descending=True, stable=True)
        return Candidates(values, self.ids.gather(1, order), self.vocab_size, True)


@dataclass
class DecodeContext:
    """What a processor may need to know about the generation it is part of.

    The driver passes one to :meth:`Processor.reset` at the start of each generation.

    Args:
        prompt_length: number of columns of ``input_ids`` that belong to the (left-padded) prompt;
            generated tokens start at this column.
        eos_token_ids: the model's end-of-sequence token ids.
        tokenizer: the model's tokenizer, when there is one (processors that take strings need it).
        generators: one ``torch.Generator`` per row, for processors that draw random numbers.
        padding: per row, how many leading columns of ``input_ids`` are left padding (not text); None when
            no row is padded. A search whose rows grow by different numbers of tokens (speculative decoding)
            updates it as the rows' widths change.
        prompt_lengths: per row, how many tokens its prompt has (without padding); None when unknown. With
            ``padding`` it places each row's first generated token at column ``padding[i] + prompt_lengths[i]``
            (see :meth:`generated_start`).
        live: bool ``[B]``: which rows are still generating; None when all are. A row that has finished
            (EOS, stop string) may stay in the batch and still be given a token (the pad id) by
            :meth:`Processor.accept`: a processor with per-row state should ignore it there.
    """

    prompt_length: int = 0
    eos_token_ids: tuple[int, ...] = ()
    tokenizer: Any = None
    generators: list[torch.Generator] | None = field(default=None)
    padding: list[int] | None = None
    prompt_lengths: list[int] | None = None
    live: torch.Tensor | None = None

    def follow(self, event: Any) -> None:
        """Keep the per-row fields in step with a batch event (:mod:`decoders.events`)."""
        if isinstance(event, RowsSelected):
            self.select_rows(event.indices.tolist())
            if event.rows and (self.generators is not None or any(row.generator is not None for row in event.rows)):
                self.generators = [row.generator for row in event.rows]
        elif isinstance(event, RowsAdded):
            rows = event.rows
            before = event.start
            if self.generators is not None or any(row.generator is not None for row in rows):
                self.generators = (self.generators or [None] * before) + [row.generator for row in rows]
            padding = list(event.padding) or [0] * len(rows)
            if self.padding is not None or any(padding):
                self.padding = (self.padding or [0] * before) + padding
            if self.prompt_lengths is not None or before == 0:
                self.prompt_lengths = (self.prompt_lengths or []) + [len(row.prompt_ids) for row in rows]
            if self.live is not None:
                self.live = torch.cat([self.live, self.live.new_ones(len(rows))])
        elif isinstance(event, RowsFinished):
            if self.live is None:
                self.live = torch.ones(event.size, dtype=torch.bool)
            self.live = self.live.clone()
            self.live[list(event.rows)] = False
        elif isinstance(event, RowsWidened):
            self.prompt_length += event.columns
            if self.padding is not None:
                self.padding = [pad + event.columns for pad in self.padding]

    def select_rows(self, rows: list[int]) -> None:
        """Follow a change of rows: row i now continues old row ``rows[i]`` (per-row fields are reindexed)."""
        if self.padding is not None:
            self.padding = [self.padding[r] for r in rows]
        if self.prompt_lengths is not None:
            self.prompt_lengths = [self.prompt_lengths[r] for r in rows]
        if self.generators is not None:
            self.generators = [self.generators[r] for r in rows]
        if self.live is not None:
            self.live = self.live[torch.as_tensor(rows, dtype=torch.long, device=self.live.device)]

    def generated_start(self, input_ids: torch.Tensor) -> torch.Tensor | int:
        """The column of ``input_ids`` where each row's generated tokens start: ``[B]``, or one int for all rows.

        It is :attr:`prompt_length` unless the rows' prompts and padding say otherwise (rows of different
        widths in speculative decoding).
        """
        if self.padding is None or self.prompt_lengths is None:
            return self.prompt_length
        starts = [pad + length for pad, length in zip(self.padding, self.prompt_lengths)]
        if all(start == self.prompt_length for start in starts):
            return self.prompt_length
        return torch.tensor(starts, device=input_ids.device)

    def text_ids(self, input_ids: torch.Tensor, filler: int) -> torch.Tensor:
        """``input_ids`` with each row's left padding replaced by ``filler`` (unchanged when unpadded)."""
        if not self.padding or not any(self.padding):
            return input_ids
        pads = torch.tensor(self.padding, device=input_ids.device).unsqueeze(-1)
        columns = torch.arange(input_ids.shape[-1], device=input_ids.device)
        return input_ids.masked_fill(columns < pads, filler)


class Component:
    """What processors, selectors and searches share: a ``kind`` label.

    The config that builds a component sets ``kind`` (:meth:`ComponentConfig.create`): the config is the one place
    a kind is declared. A component made directly is labelled with its class name.
    """

    kind: str = "Component"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            cls.kind = cls.__name__


class Processor(Component):
    """Base class of logits processors.

    Subclasses implement :meth:`process` (dense). They may also implement :meth:`process_candidates`
    (set ``supports_candidates = True``) and :meth:`to_candidates` (for truncations that can bound the
    survivors without a full-vocabulary pass).

    The state protocol: a processor that derives everything from ``input_ids`` (and its context) is
    stateless and needs none of it. A processor with memory per row between steps (mirostat's μ, a grammar
    matcher) is *stateful*: it overrides :meth:`update`, which receives every change of the batch's rows as one
    event of :mod:`decoders.events` — :class:`~decoders.events.TokensAccepted` (the tokens the rows were given),
    :class:`~decoders.events.RowsSelected` (row i continues old row ``indices[i]``: forks, reorders, drops),
    :class:`~decoders.events.RowsAdded` (requests joining a running batch), :class:`~decoders.events.RowsRewound`
    (speculative decoding takes back rejected drafts), :class:`~decoders.events.RowsFinished` and
    :class:`~decoders.events.RowsWidened`; the context's per-row fields are already updated when it is called.

    The older protocol still works: a processor that overrides :meth:`accept` (and :meth:`reorder`,
    :meth:`rollback`) instead of :meth:`update` gets those calls from the default :meth:`update`; it cannot
    follow rows that join (such a chain gets rows of one start only: the engine gives later requests a chain of
    their own). A search refuses, when the chain is built, a stateful processor that lacks a method it needs.
    :attr:`DecodeContext.live` says which rows are still generating.
    """

    #: whether :meth:`process_candidates` is implemented
    supports_candidates: bool = False
    #: whether the rule maps each value on its own, preserving order (the chain may then run a following
    #: top-k first and apply this rule to the k survivors only)
    elementwise_monotone: bool = False
    #: whether this processor is a *constraint*: it only removes the tokens a rule forbids (a grammar) and changes
    #: no other value. The chain runs constraints on the model's logits, before every other processor, wherever
    #: they are listed: truncations after them choose among allowed tokens only (the distribution of masking
    #: first), so a truncation can never leave a row with no allowed token
    constraint: bool = False
    #: the generation this processor is part of (replaced by :meth:`reset`)
    context: DecodeContext = DecodeContext()

    def process(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> torch.Tensor:
        """Return processed logits ``[B, V]``, same dtype, never modifying ``logits``."""
        raise NotImplementedError

    def process_candidates(self, input_ids: torch.LongTensor, candidates: Candidates) -> Candidates:
        """Return the processed candidate set (only called when ``supports_candidates``)."""
        raise NotImplementedError

    def to_candidates(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> Candidates | None:
        """Process dense logits straight into a candidate set, or return None to use :meth:`process`."""
        return None

    def reset(self, context: DecodeContext) -> None:
        """Start a new generation (clear any state). Default: remember the context."""
        self.context = context

    def update(self, event: Any) -> None:
        """Follow one change of the batch's rows (an event of :mod:`decoders.events`); stateless processors need
        nothing. Default: the older protocol's :meth:`accept`, :meth:`reorder` and :meth:`rollback`."""
        if isinstance(event, TokensAccepted):
            self.accept(event.tokens)
        elif isinstance(event, RowsSelected):
            self.reorder(event.indices)
        elif isinstance(event, RowsRewound):
            self.rollback(list(event.counts))

    def accept(self, tokens: torch.LongTensor) -> None:
        """Observe the tokens ``[B]`` just selected (for stateful processors). Default: nothing."""

    def reorder(self, rows: torch.LongTensor) -> None:
        """Follow a change of rows: row i of the next step continues old row ``rows[i]`` (rows may repeat or
        go away). Called after :meth:`process` and before :meth:`accept` of the tokens the new rows got.
        Stateless processors need nothing (the context's per-row fields are updated for them)."""

    def rollback(self, counts: list[int]) -> None:
        """Forget the last ``counts[i]`` tokens :meth:`accept` gave row ``i`` (0: keep them all), as if they had
        never been accepted. Stateless processors need nothing."""

    @property
    def stateful(self) -> bool:
        """Whether this processor keeps per-row memory between steps (it overrides :meth:`update` or :meth:`accept`)."""
        return type(self).update is not Processor.update or type(self).accept is not Processor.accept

    def supports(self, method: str) -> bool:
        """Whether the rows can change in the way ``method`` names (``"reorder"``, ``"rollback"``, ``"add"``): the
        processor is stateless, implements :meth:`update`, or implements that method of the older protocol."""
        if not self.stateful or type(self).update is not Processor.update:
            return True
        return method != "add" and getattr(type(self), method) is not getattr(Processor, method)

    def __call__(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> torch.Tensor:
        return self.process(input_ids, logits)

    def __repr__(self) -> str:
        hidden = ("context", "kind")
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k not in hidden)
        return f"{type(self).__name__}({params})"
