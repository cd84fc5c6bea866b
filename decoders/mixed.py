"""Mixed-strategy batches: several chains, each over its own rows of one batch, driven as one chain.

    generate(prompts, strategy=[s_0, …, s_n-1]) → rows grouped by strategy → one Chain per group
      → MixedChain: every forward pass is shared; run/choose/accept/reorder/rollback split the batch by group

A search drives a :class:`MixedChain` exactly as it drives a :class:`~decoders.chain.Chain`. What it gets back
from :meth:`MixedChain.run` is a :class:`MixedScores` (each group's scores, dense or a candidate set, kept apart
so that every row sees exactly the numbers a single-strategy run gives it); :func:`processed_log_probs
<decoders.searches.base.processed_log_probs>` and :meth:`MixedScores.to_dense` read it like any scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from decoders.chain import Chain, Observer
from decoders.errors import StrategyError
from decoders.events import RowsAdded, RowsFinished, RowsRewound, RowsSelected, RowsWidened, TokensAccepted
from decoders.processors.base import DecodeContext, Processor
from decoders.scores import MixedScores, Scores
from decoders.selectors import Selector

#: the fields of a DecodeContext that hold one value per row
PER_ROW_FIELDS = ("padding", "prompt_lengths", "generators", "live")


class MixedChain:
    """Several chains over row groups of one batch, with the interface searches use on a :class:`Chain`.

    Every method takes and returns whole-batch tensors; each group's chain sees only its own rows (the
    :class:`DecodeContext` given to :meth:`reset` is split to the groups: padding, prompt lengths, generators,
    live rows). Rows keep their group when a search reorders, forks or drops them.

    Rows that join (:class:`~decoders.events.RowsAdded`) go to the group of their strategy (``Row.group``), or to
    a new group whose chain is built from ``Row.strategy`` (also when the group's chain cannot take rows that
    join: a stateful processor of the older protocol); groups whose rows have all left are let go.

    Args:
        chains: one chain per group.
        groups: the batch rows of each group (every row in exactly one group).
        keys: each group's strategy key (rows that join with that key go to its group); default: none.

    Example:
        >>> from decoders.processors import TopK
        >>> from decoders.selectors import Greedy
        >>> mixed = MixedChain([Chain([], Greedy()), Chain([TopK(1)], Greedy())], [[0, 2], [1]])
        >>> mixed.select(torch.zeros(3, 0, dtype=torch.long), torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]]))
        tensor([1, 0, 1])
    """

    def __init__(self, chains: Sequence[Chain], groups: Sequence[Sequence[int]], keys: Sequence[str] | None = None):
        if len(chains) != len(groups):
            raise ValueError(f"got {len(chains)} chains for {len(groups)} row groups: pass one chain per group")
        rows = sorted(row for group in groups for row in group)
        if rows != list(range(len(rows))):
            raise ValueError(f"the row groups must hold each row 0 … n-1 exactly once, got {list(map(list, groups))}")
        self.chains = list(chains)
        self.keys = list(keys) if keys is not None else [f"group {index}" for index in range(len(chains))]
        self.rows = len(rows)
        self.device = torch.device("cpu")
        self._shared = DecodeContext()  # the fields every group's context shares (set by reset)
        self._set_groups([list(group) for group in groups])

    def _set_groups(self, group_rows: list[list[int]]) -> None:
        self.group_rows = group_rows
        self.rows = sum(map(len, group_rows))
        self._index = [torch.as_tensor(rows, dtype=torch.long, device=self.device) for rows in group_rows]
        #: a contiguous group is read as a slice (a view), not copied
        self._slices = [
            slice(rows[0], rows[-1] + 1) if rows and rows == list(range(rows[0], rows[-1] + 1)) else None
            for rows in group_rows
        ]

    def _active(self) -> list[int]:
        return [g for g, rows in enumerate(self.group_rows) if rows]

    def _take(self, tensor: torch.Tensor, group: int) -> torch.Tensor:
        part = self._slices[group]
        if part is not None:
            return tensor[part]
        return tensor.index_select(0, self._index[group].to(tensor.device))

    def _split(self, items: Sequence[Any] | None, group: int) -> list[Any] | None:
        return None if items is None else [items[row] for row in self.group_rows[group]]

    # ---- the Chain interface -----------------------------------------------------------------------------

    @property
    def processors(self) -> list[Processor]:
        """Every group's processors (for checks that apply to all of them)."""
        return [p for chain in self.chains for p in chain.processors]

    @property
    def selector(self) -> Selector:
        """The selector, when every group has the same one (searches that pick tokens themselves need one)."""
        first = self.chains[0].selector
        if any(type(c.selector) is not type(first) or vars(c.selector) != vars(first) for c in self.chains[1:]):
            kinds = ", ".join(sorted({c.selector.kind for c in self.chains}))
            raise StrategyError(
                f"the rows of this batch use different selectors ({kinds}), and this search picks tokens with one "
                "selector for the whole batch: give every row the same selector, or split the call"
            )
        return first

    def reset(self, context: DecodeContext | None = None) -> None:
        """Start a new generation: each group's chain gets the context with its own rows' per-row fields."""
        context = context or DecodeContext()
        self._shared = DecodeContext(context.prompt_length, context.eos_token_ids, context.tokenizer)
        for group, chain in enumerate(self.chains):
            rows = self.group_rows[group]
            fields = {name: getattr(context, name) for name in ("prompt_length", "eos_token_ids", "tokenizer")}
            per_row: dict[str, Any] = {}
            for name in PER_ROW_FIELDS:
                value = getattr(context, name)
                if value is None:
                    per_row[name] = None
                elif isinstance(value, torch.Tensor):
                    per_row[name] = value[torch.as_tensor(rows, device=value.device)]
                else:
                    per_row[name] = [value[row] for row in rows]
            chain.reset(DecodeContext(**fields, **per_row))

    def run(self, input_ids: torch.LongTensor, logits: torch.Tensor, observer: Observer | None = None) -> MixedScores:
        """Run each group's chain on its rows. With an ``observer`` (tracing) it sees each group's stages in turn,
        and the result keeps them in :attr:`MixedScores.stages`."""
        if logits.device != self.device:
            self.device = logits.device
            self._set_groups(self.group_rows)
        whole = self._whole()
        if whole is not None:  # one group holds every row, in order: its chain's scores are the batch's
            return self.chains[whole].run(input_ids, logits, observer)
        parts, rows, stages = [], [], [] if observer is not None else None
        for group in self._active():
            group_logits = self._take(logits, group)
            group_observer = None
            if observer is not None:
                group_stages: list[tuple[str, Scores]] = [("model", group_logits)]
                stages.append(group_stages)

                def group_observer(index, processor, before, after, _stages=group_stages):
                    _stages.append((processor.kind, after))
                    observer(index, processor, before, after)

            parts.append(self.chains[group].run(self._take(input_ids, group), group_logits, group_observer))
            rows.append(self._index[group])
        return MixedScores(parts, rows, stages)

    def process(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> torch.Tensor:
        """Processed scores of every row, dense ``[B, V]``."""
        return self.run(input_ids, logits).to_dense()

    def _whole(self) -> int | None:
        """The group that holds every row in batch order, if one does."""
        active = self._active()
        if len(active) == 1 and self._slices[active[0]] == slice(0, self.rows):
            return active[0]
        return None

    def choose(self, scores: MixedScores | Scores, generators: list[torch.Generator] | None = None) -> torch.LongTensor:
        """Each group's selector on its rows' scores: ids ``[B]``."""
        if not isinstance(scores, MixedScores):  # one group's scores (see run)
            return self.chains[self._whole()].choose(scores, generators)
        tokens = [
            self.chains[group].choose(part, self._split(generators, group))
            for group, part in zip(self._active(), scores.parts)
        ]
        return scores.gather_rows(tokens)

    def select(
        self, input_ids: torch.LongTensor, logits: torch.Tensor, generators: list[torch.Generator] | None = None
    ) -> torch.LongTensor:
        """Process ``logits`` and pick one token per row: ids ``[B]``."""
        return self.choose(self.run(input_ids, logits), generators)

    def update(self, event) -> None:
        """Follow a change of the batch's rows: each group gets the part of the event about its own rows."""
        if isinstance(event, RowsSelected):
            self._select(event)
        elif isinstance(event, RowsAdded):
            self._add(event)
        elif isinstance(event, TokensAccepted):
            for group in self._active():
                self.chains[group].update(TokensAccepted(self._take(event.tokens, group)))
        elif isinstance(event, RowsRewound):
            for group in self._active():
                counts = tuple(self._split(event.counts, group))
                if any(counts):
                    self.chains[group].update(RowsRewound(counts))
        elif isinstance(event, RowsFinished):
            finished = set(event.rows)
            for group in self._active():
                local = tuple(i for i, row in enumerate(self.group_rows[group]) if row in finished)
                if local:
                    self.chains[group].update(RowsFinished(local, len(self.group_rows[group])))
        elif isinstance(event, RowsWidened):
            self._shared.prompt_length += event.columns
            for chain in self.chains:
                chain.update(event)

    def accept(self, tokens: torch.LongTensor) -> None:
        """Tell each group's processors the tokens its rows were just given."""
        self.update(TokensAccepted(tokens))

    def set_padding(self, padding: Sequence[int], prompt_lengths: Sequence[int] | None = None) -> None:
        """The left padding (and prompt lengths) of the ``input_ids`` the next runs get, per batch row."""
        for group, chain in enumerate(self.chains):
            chain.set_padding(
                self._split(padding, group), None if prompt_lengths is None else self._split(prompt_lengths, group)
            )

    def reorder(self, rows: torch.LongTensor) -> None:
        """Row i of the next step continues old row ``rows[i]`` (in its group): every group follows its rows."""
        self.update(RowsSelected(torch.as_tensor(rows, dtype=torch.long), ()))

    def rollback(self, counts: Sequence[int]) -> None:
        """Each group's processors forget the last ``counts[i]`` tokens of its rows."""
        self.update(RowsRewound(tuple(int(c) for c in counts)))

    def _select(self, event: RowsSelected) -> None:
        old = event.indices.tolist()
        owner: dict[int, tuple[int, int]] = {}
        for group, members in enumerate(self.group_rows):
            for local, row in enumerate(members):
                owner[row] = (group, local)
        new_groups: list[list[int]] = [[] for _ in self.chains]
        local_rows: list[list[int]] = [[] for _ in self.chains]
        for new_row, old_row in enumerate(old):
            group, local = owner[old_row]
            new_groups[group].append(new_row)
            local_rows[group].append(local)
        for group, chain in enumerate(self.chains):
            if local_rows[group] and local_rows[group] != list(range(len(self.group_rows[group]))):
                rows = tuple(event.rows[i] for i in new_groups[group]) if event.rows else ()
                chain.update(RowsSelected(torch.as_tensor(local_rows[group], dtype=torch.long), rows))
        kept = [group for group, rows in enumerate(new_groups) if rows or not event.rows]
        self.chains, self.keys = [self.chains[g] for g in kept], [self.keys[g] for g in kept]
        self._set_groups([new_groups[g] for g in kept])

    def _add(self, event: RowsAdded) -> None:
        """Rows that join go to their strategy's group (a new group when there is none that can take them)."""
        padding = list(event.padding) or [0] * len(event.rows)
        joining: dict[int, list[int]] = {}  # group → indices into event.rows
        for index, row in enumerate(event.rows):
            group = next(
                (g for g, key in enumerate(self.keys) if key == row.group and all(
                    p.supports("add") for p in self.chains[g].processors
                ) and (g in joining or self.group_rows[g])),
                None,
            )  # fmt: skip
            if group is None:
                chain = row.strategy.build()
                chain.reset(
                    DecodeContext(
                        self._shared.prompt_length, self._shared.eos_token_ids, self._shared.tokenizer,
                        generators=None, padding=[], prompt_lengths=[],
                    )  # fmt: skip
                )
                self.chains.append(chain)
                self.keys.append(row.group)
                self.group_rows.append([])
                group = len(self.chains) - 1
            joining.setdefault(group, []).append(index)
        groups = [list(rows) for rows in self.group_rows]
        for group, indices in joining.items():
            start = len(groups[group])
            rows = tuple(event.rows[i] for i in indices)
            self.chains[group].update(RowsAdded(rows, start, tuple(padding[i] for i in indices)))
            groups[group] += [event.start + i for i in indices]
        self._set_groups(groups)

    def require(self, methods: Sequence[str], search: str) -> None:
        """Refuse a stateful processor, in any group, that lacks a state method ``search`` will call."""
        for chain in self.chains:
            chain.require(methods, search)

    def __repr__(self) -> str:
        groups = ", ".join(f"rows {rows}: {chain!r}" for rows, chain in zip(self.group_rows, self.chains))
        return f"MixedChain({groups})"
