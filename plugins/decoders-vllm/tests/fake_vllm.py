"""A fake of what vLLM's V1 persistent batch (``InputBatch`` + ``BatchUpdateBuilder``, vllm/v1/worker/gpu_input_batch.py
and vllm/v1/sample/logits_processor/state.py) shows logits processors, to drive :class:`DecodersRows` without vLLM.

Per step, as vLLM does: finished requests are removed (their slots freed), new requests fill the lowest freed slot
first and are otherwise appended, then ``condense`` slides the last requests down into the holes (UNIDIRECTIONAL
moves); a ``swap`` is a SWAP move. ``update()`` is the step's ``BatchUpdate`` (None when nothing changed).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class MoveDirectionality(enum.Enum):
    UNIDIRECTIONAL = enum.auto()
    SWAP = enum.auto()


@dataclass(frozen=True)
class BatchUpdate:
    batch_size: int
    removed: list[int]
    added: list[tuple[int, Any, list[int] | None, list[int]]]
    moved: list[tuple[int, int, MoveDirectionality]]


@dataclass
class Params:
    """The parts of ``SamplingParams`` the plugin reads."""

    extra_args: dict | None = None
    seed: int | None = None
    temperature: float = 1.0


@dataclass(eq=False)
class Request:
    prompt: list[int]
    params: Params
    outputs: list[int] = field(default_factory=list)


class FakeBatch:
    def __init__(self):
        self.slots: list[Request | None] = []
        self._removed: list[int] = []
        self._added: list = []
        self._moved: list = []

    @property
    def requests(self) -> list[Request]:
        return [r for r in self.slots if r is not None]

    def remove(self, request: Request) -> None:
        index = self.slots.index(request)
        self.slots[index] = None
        self._removed.append(index)

    def add(self, request: Request) -> None:
        if self._removed:
            index = min(self._removed)
            self._removed.remove(index)
            self.slots[index] = request
        else:
            index = len(self.slots)
            self.slots.append(request)
        self._added.append((index, request.params, list(request.prompt), request.outputs))

    def condense(self) -> None:
        """vLLM's condense: while a hole lies below the last request, move that request into the lowest hole."""
        while self._removed:
            occupied = [i for i, r in enumerate(self.slots) if r is not None]
            if not occupied:
                break
            last, hole = occupied[-1], min(self._removed)
            if hole >= last:
                break
            self._removed.remove(hole)
            self.slots[hole], self.slots[last] = self.slots[last], None
            self._moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
        while self.slots and self.slots[-1] is None:
            self.slots.pop()

    def swap(self, a: int, b: int) -> None:
        self.slots[a], self.slots[b] = self.slots[b], self.slots[a]
        self._moved.append((a, b, MoveDirectionality.SWAP))

    def update(self) -> BatchUpdate | None:
        self.condense()
        if not (self._removed or self._added or self._moved):
            return None
        update = BatchUpdate(len(self.slots), sorted(self._removed, reverse=True), self._added, self._moved)
        self._removed, self._added, self._moved = [], [], []
        return update
