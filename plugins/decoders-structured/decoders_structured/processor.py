"""The grammar constraint: one llguidance matcher per row, masking every token the grammar does not allow next."""

from __future__ import annotations

import numpy as np
import torch

import decoders
from decoders_structured.grammars import compiled_matcher


#: to_candidates hands over a candidate set when at most 1 / SPARSE of the vocabulary is allowed
SPARSE = 8


class GrammarConstraint(decoders.Processor):
    """Allow only the tokens that keep each row's output a prefix of the grammar's language; EOS only once the
    grammar accepts, and nothing but EOS once it cannot go on.

    A *constraint* (``constraint = True``): the chain runs it on the model's logits before every other processor,
    wherever it is listed, so a truncation after it (top-k, top-p, …) chooses among allowed tokens — the
    distribution of masking first — and never empties a row. Stateful: one matcher per row, advanced by
    :meth:`accept` (rows that are not live, or whose output is complete, are left alone), forked and dropped by
    :meth:`reorder` (beam search), rewound by :meth:`rollback` (speculative decoding).

    Args:
        grammar: an llguidance grammar (see :mod:`decoders_structured.grammars`: from a JSON Schema, a regex or a
            Lark grammar), compiled once per tokenizer and cached.

    Example:
        >>> from decoders_structured.grammars import regex_grammar
        >>> GrammarConstraint(regex_grammar("yes|no")).constraint
        True
    """

    constraint = True
    supports_candidates = True

    def __init__(self, grammar: str):
        decoders.check_parameter(isinstance(grammar, str) and bool(grammar), "grammar", grammar, "llguidance grammar text")
        self.grammar = grammar
        self._start = None  # the compiled matcher in its start state (shared, never advanced)
        self._matchers: list | None = None  # one per row; None while every row is in the start state
        self._consumed: list[list[int | None]] = []  # per row, per accepted token: the token the matcher took, or None
        self._failed: list[bool] = []  # per row: its matcher took a token the grammar forbids (an error state)
        self._vocab = 0
        self._eos: frozenset[int] = frozenset()
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (logits, allowed) from to_candidates

    def reset(self, context: decoders.DecodeContext) -> None:
        super().reset(context)
        if context.tokenizer is None:
            raise ValueError(
                f"the '{self.kind}' constraint needs the model's tokenizer to know which text each token is; "
                "generate with decoders.generate (which passes it), or give ChainLogitsProcessor(tokenizer=...)"
            )
        eos = tuple(context.eos_token_ids)
        if not eos and getattr(context.tokenizer, "eos_token_id", None) is not None:
            eos = (context.tokenizer.eos_token_id,)
        if not eos:
            raise ValueError(
                f"the '{self.kind}' constraint needs an end-of-sequence token id to end a complete output; the "
                "model and tokenizer name none: pass eos_token_ids"
            )
        self._start, tokenizer = compiled_matcher(self.grammar, context.tokenizer, eos)
        self._vocab, self._eos = tokenizer.vocab_size, frozenset(eos)
        self._matchers, self._consumed = None, []

    # ---- rows --------------------------------------------------------------------------------------------------

    def _rows(self, count: int) -> list:
        if self._start is None:
            raise ValueError(
                f"the '{self.kind}' constraint has not been started: call chain.reset(DecodeContext(tokenizer=..., "
                "eos_token_ids=...)) before processing (decoders.generate does)"
            )
        if self._matchers is None:
            self._matchers = [self._start.deep_copy() for _ in range(count)]
            self._consumed = [[] for _ in range(count)]
            self._failed = [False] * count
        if len(self._matchers) != count:
            raise ValueError(
                f"the '{self.kind}' constraint follows {len(self._matchers)} rows but was given {count}: a search that "
                "changes the rows must call chain.reorder"
            )
        return self._matchers

    def _finished(self, row: int) -> bool:
        """Whether the row's output has ended (its matcher took an EOS or a token the grammar forbids)."""
        last = next((t for t in reversed(self._consumed[row]) if t is not None), None)
        return last in self._eos or self._failed[row]

    def allowed(self, rows: int, width: int) -> torch.Tensor:
        """bool ``[rows, width]``: the tokens each row may take next (all, for rows that are not generating)."""
        matchers = self._rows(rows)
        filled = (self._vocab + 31) // 32  # llguidance writes exactly the tokenizer's words; wider logits stay 0
        bits = np.zeros((rows, max(filled, (width + 31) // 32)), dtype=np.int32)
        live = self.context.live
        open_rows = [r for r in range(rows) if (live is None or bool(live[r])) and not self._finished(r)]
        for row in open_rows:
            view = bits[row, :filled]
            matchers[row].unsafe_compute_mask_ptr(view.ctypes.data, view.nbytes)
        mask = torch.from_numpy(np.unpackbits(bits.view(np.uint8), axis=-1, bitorder="little")).view(torch.bool)[:, :width]
        if len(open_rows) < rows:
            closed = torch.ones(rows, dtype=torch.bool)
            closed[open_rows] = False
            mask[closed] = True
        return mask

    # ---- the processor contract --------------------------------------------------------------------------------

    def process(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> torch.Tensor:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is logits:  # computed by to_candidates a moment ago
            allowed = pending[1]
        else:
            allowed = self.allowed(logits.shape[0], logits.shape[-1]).to(logits.device)
        return logits.masked_fill(~allowed, decoders.NEG_INF)

    def to_candidates(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> decoders.Candidates | None:
        """The allowed tokens as a candidate set when they are few (a JSON key, a number, punctuation), so that the
        processors after it work on them only; None when many are allowed (inside a string)."""
        rows, width = logits.shape
        allowed = self.allowed(rows, width).to(logits.device)
        if rows == 1:  # the common case, in three operations
            ids = allowed[0].nonzero().view(1, -1)
            if ids.shape[1] * SPARSE > width:
                self._pending = (logits, allowed)
                return None
            return decoders.Candidates(logits.gather(1, ids), ids, width)
        counts = allowed.sum(dim=-1)
        k = int(counts.max())
        if k * SPARSE > width:
            self._pending = (logits, allowed)
            return None
        row_index, ids = allowed.nonzero(as_tuple=True)  # row-major: each row's allowed ids in increasing order
        starts = counts.cumsum(dim=0) - counts  # where each row's entries begin in that list
        slots = torch.arange(len(ids), device=ids.device) - starts[row_index]
        candidate_ids = torch.zeros((rows, k), dtype=torch.long, device=logits.device)
        values = torch.full((rows, k), decoders.NEG_INF, dtype=logits.dtype, device=logits.device)
        candidate_ids[row_index, slots] = ids
        values[row_index, slots] = logits[row_index, ids]
        return decoders.Candidates(values, candidate_ids, width)

    def process_candidates(self, input_ids: torch.LongTensor, candidates: decoders.Candidates) -> decoders.Candidates:
        allowed = self.allowed(candidates.ids.shape[0], candidates.vocab_size).to(candidates.ids.device)
        keep = allowed.gather(1, candidates.ids)
        return candidates.with_values(candidates.values.masked_fill(~keep, decoders.NEG_INF), still_sorted=True)

    def accept(self, tokens: torch.LongTensor) -> None:
        matchers = self._rows(tokens.shape[0])
        live = self.context.live
        for row, token in enumerate(tokens.tolist()):
            if (live is not None and not bool(live[row])) or self._finished(row):
                self._consumed[row].append(None)
                continue
            # a forbidden token (a beam whose score is -inf, a rejected draft) leaves the matcher in error
            self._failed[row] = not matchers[row].consume_token(token)
            self._consumed[row].append(token)

    def reorder(self, rows: torch.LongTensor) -> None:
        if self._matchers is None:  # every row is in the start state: nothing to follow
            return
        seen: set[int] = set()
        matchers, consumed = [], []
        rows = rows.tolist()
        for row in rows:
            matcher = self._matchers[row]
            matchers.append(matcher.deep_copy() if row in seen else matcher)
            consumed.append(list(self._consumed[row]))
            seen.add(row)
        self._matchers, self._consumed, self._failed = matchers, consumed, [self._failed[row] for row in rows]

    def rollback(self, counts: list[int]) -> None:
        if self._matchers is None:
            return
        for row, count in enumerate(counts):
            if not count:
                continue
            dropped = self._consumed[row][len(self._consumed[row]) - count :]
            del self._consumed[row][len(self._consumed[row]) - count :]
            taken = sum(token is not None for token in dropped)
            matcher = self._matchers[row]
            if self._failed[row] or not matcher.rollback(taken):  # an error state cannot be rewound: replay
                matcher = self._start.deep_copy()
                matcher.consume_tokens([t for t in self._consumed[row] if t is not None])
                self._matchers[row] = matcher
            self._failed[row] = matcher.is_error()
