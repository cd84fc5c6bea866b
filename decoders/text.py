"""Text assembly: incremental detokenisation, stop strings, streaming text.

Every text decoders returns is decoded with :data:`DECODE`: the exact text the model wrote, special tokens
left out, no clean-up of spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: decoding options used for every text decoders returns
DECODE = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}


class RowText:
    """The text of one row, decoded incrementally (a few tokens at a time, never the whole sequence).

    A token's text is taken only once it decodes cleanly (no trailing U+FFFD from half a UTF-8 character);
    with stop strings, text that may be the start of one is held back until it is clear.

    Args:
        tokenizer: decodes token ids.
        stops: the stop strings; :attr:`stop_at` is set once the text contains one.

    Example:
        >>> row = RowText(tokenizer, stops=["."])  # doctest: +SKIP
        >>> for token in tokenizer.encode("Hi. Bye"): row.push(token)  # doctest: +SKIP
        >>> row.final_text, row.stop_at  # doctest: +SKIP
        ('Hi', 2)
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str]):
        self.tokenizer = tokenizer
        self.stops = stops
        self.longest_stop = max(map(len, stops), default=0)
        self.ids: list[int] = []
        self.prefix_offset = 0  # ids[prefix_offset:read_offset] give the context for decoding the new ids
        self.read_offset = 0
        self.text = ""
        self.emitted = 0
        self.stop_at: int | None = None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, **DECODE)

    def push(self, token_id: int) -> None:
        """Add a token; afterwards :attr:`stop_at` is set if the text now contains a stop string."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._extend(after[len(before) :])
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def flush(self) -> None:
        """End of the row: take whatever is left, even half a character."""
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        self.text += self._decode(self.ids[self.prefix_offset :])[len(before) :]
        self.read_offset = len(self.ids)

    def _extend(self, new: str) -> None:
        start = max(0, len(self.text) - self.longest_stop + 1)
        self.text += new
        if self.stops:
            found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if found:
                self.stop_at = min(found)

    def take(self, final: bool) -> str:
        """The text not yet taken that is certain to stay (all of it, cut at a stop string, when ``final``)."""
        end = len(self.text) if self.stop_at is None else self.stop_at
        if not final:
            end -= self._held_back()
        new, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
        return new

    def _held_back(self) -> int:
        """Length of the longest end of the text that is a proper prefix of a stop string."""
        for length in range(min(self.longest_stop - 1, len(self.text) - self.emitted), 0, -1):
            if any(s.startswith(self.text[-length:]) for s in self.stops):
                return length
        return 0

    @property
    def final_text(self) -> str:
        return self.text if self.stop_at is None else self.text[: self.stop_at]
