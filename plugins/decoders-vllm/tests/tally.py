"""Two test-only stateful processor kinds that make each row's accepted tokens visible in its logits.

``tally`` follows rows through :meth:`update` (decoders' events; rows may join its chain), ``old_tally`` through the
older ``accept``/``reorder`` protocol (a chain of it never takes joining rows). Both add ``0.5 ×`` (times the token
was accepted) to each token's logit, ignore tokens given to rows that are not live, and record in :data:`PROBLEMS`
any row whose accepted tokens differ from the generated ids the chain hands it in ``input_ids``.
"""

from __future__ import annotations

import types
from typing import Literal

import torch

import decoders
from decoders.events import RowsAdded, RowsSelected, TokensAccepted

#: mismatches seen (a test asserts it stays empty)
PROBLEMS: list[str] = []


def _add_history(logits: torch.Tensor, histories: list[list[int]]) -> torch.Tensor:
    out = logits.clone()
    for row, history in enumerate(histories):
        for token in history:
            out[row, token] += 0.5
    return out


def _check(context: decoders.DecodeContext, input_ids: torch.Tensor, histories: list[list[int]], kind: str) -> None:
    padding = context.padding or [0] * input_ids.shape[0]
    for row, history in enumerate(histories):
        start = padding[row] + context.prompt_lengths[row]
        generated = input_ids[row, start:].tolist()
        if generated != history:
            PROBLEMS.append(f"{kind} row {row}: accepted {history}, input_ids generated {generated}")


class Tally(decoders.Processor):
    def __init__(self):
        self.histories: list[list[int]] = []

    def reset(self, context):
        super().reset(context)
        self.histories = []

    def update(self, event):
        if isinstance(event, RowsAdded):
            self.histories += [[] for _ in event.rows]
        elif isinstance(event, RowsSelected):
            self.histories = [list(self.histories[i]) for i in event.indices.tolist()]
        elif isinstance(event, TokensAccepted):
            live = self.context.live
            for row, token in enumerate(event.tokens.tolist()):
                if live is None or bool(live[row]):
                    self.histories[row].append(token)

    def process(self, input_ids, logits):
        if len(self.histories) != logits.shape[0]:
            PROBLEMS.append(f"tally follows {len(self.histories)} rows, given {logits.shape[0]}")
        _check(self.context, input_ids, self.histories, "tally")
        return _add_history(logits, self.histories)


class OldTally(decoders.Processor):
    def __init__(self):
        self.histories: list[list[int]] | None = None

    def reset(self, context):
        super().reset(context)
        self.histories = None

    def _rows(self, count):
        if self.histories is None:
            self.histories = [[] for _ in range(count)]
        return self.histories

    def accept(self, tokens):
        histories = self._rows(tokens.shape[0])
        live = self.context.live
        for row, token in enumerate(tokens.tolist()):
            if live is None or bool(live[row]):
                histories[row].append(token)

    def reorder(self, rows):
        if self.histories is not None:
            self.histories = [list(self.histories[i]) for i in rows.tolist()]

    def process(self, input_ids, logits):
        histories = self._rows(logits.shape[0])
        if len(histories) != logits.shape[0]:
            PROBLEMS.append(f"old_tally follows {len(histories)} rows, given {logits.shape[0]}")
        _check(self.context, input_ids, histories, "old_tally")
        return _add_history(logits, histories)


class Explode(decoders.Processor):
    """Raises in ``process`` once a row has ``after`` generated tokens (a chain failing mid-generation)."""

    def __init__(self, after: int):
        self.after = after

    def process(self, input_ids, logits):
        start = self.context.generated_start(input_ids)
        lengths = input_ids.shape[-1] - (start if isinstance(start, int) else start.min().item())
        if lengths >= self.after:
            raise RuntimeError("explode: boom")
        return logits


class TallyConfig(decoders.ProcessorConfig):
    kind: Literal["tally"] = "tally"

    def build(self) -> Tally:
        return Tally()


class OldTallyConfig(decoders.ProcessorConfig):
    kind: Literal["old_tally"] = "old_tally"

    def build(self) -> OldTally:
        return OldTally()


class ExplodeConfig(decoders.ProcessorConfig):
    kind: Literal["explode"] = "explode"
    after: int = 0

    def build(self) -> Explode:
        return Explode(self.after)


@decoders.hookimpl
def decoders_register_processors(register):
    for config in (TallyConfig, OldTallyConfig, ExplodeConfig):
        register(config)


PLUGIN = types.SimpleNamespace(decoders_register_processors=decoders_register_processors)
