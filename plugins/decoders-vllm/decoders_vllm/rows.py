"""The vLLM-independent half of the plugin: which requests opted in, their strategies, and their rows' state.

    vLLM's persistent batch                         decoders
    BatchUpdate(added, removed, moved)  ──update──▶ slot → request (its Row, its live output list)
    apply(logits [num_reqs, V])         ──apply───▶ 1. TokensAccepted for the tokens that appeared in each
                                                       request's output list since the last apply
                                                    2. RowsSelected / RowsAdded: the opted-in requests, in slot
                                                       order, followed by a MixedChain (one chain per strategy)
                                                    3. each group's chain on its rows' logits, written back

The batch events are delivered at apply time, after the tokens of the previous step: the order decoders' own
engine follows (accept, drop, add, run), so a stateful processor always accepts a row's token before that row
moves or leaves. This module imports no vLLM: :class:`DecodersRows` reads a ``BatchUpdate`` by duck typing
(``batch_size``, ``added``, ``removed``, ``moved``; a move's direction by its ``name``, ``"SWAP"`` or not), so it is
tested with fake updates.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError

from decoders.batch import Row
from decoders.chain import Chain
from decoders.errors import StrategyError, validation_message
from decoders.events import RowsAdded, RowsSelected, TokensAccepted
from decoders.mixed import MixedChain
from decoders.plugins import get_registry
from decoders.processors.base import Candidates, DecodeContext
from decoders.strategy import Strategy

logger = logging.getLogger("decoders_vllm")

__all__ = ["EXTRA_ARG", "DecodersRows", "request_strategy", "resolve_strategy", "strategy_key"]

#: the key of ``SamplingParams.extra_args`` (and of the OpenAI server's ``vllm_xargs``) a request opts in with
EXTRA_ARG = "decoders"
#: vLLM treats a temperature below this as greedy decoding (``vllm.sampling_params._SAMPLING_EPS``)
GREEDY_BELOW = 1e-5

#: what to use instead of a search that cannot run inside vLLM's sampler
SEARCH_ADVICE = {
    "beam": "use vLLM's own beam search: LLM.beam_search(prompts, BeamSearchParams(beam_width=...)) offline, "
    "use_beam_search=true on the OpenAI server",
    "best_of": "ask vLLM for several samples (SamplingParams(n=..., logprobs=...)) and keep the best yourself",
    "stochastic_beam": "ask vLLM for several samples (SamplingParams(n=..., seed=...)); vLLM has no sampling "
    "without replacement",
    "speculative": "configure vLLM's own speculative decoding (speculative_config), but note that vLLM then drops "
    "custom logits processors, this one included",
    "contrastive": "vLLM has no contrastive search: run it with decoders.generate",
    "dola": "vLLM has no DoLa: run it with decoders.generate",
}


# ---- a request's strategy ----------------------------------------------------------------------------------------


def strategy_key(strategy: Strategy) -> str:
    """Rows whose strategies have equal keys share one chain (the key decoders' engine groups rows by)."""
    return strategy.model_dump_json(exclude={"name", "description"})


@functools.lru_cache(maxsize=512)
def _resolve_text(text: str) -> Strategy:
    """:func:`resolve_strategy` of a preset name or JSON text (cached: the frontend and the worker both resolve)."""
    if not text.startswith(("{", "[")):
        presets = get_registry().presets
        if text in presets:
            return Strategy.from_preset(text)
        close = difflib.get_close_matches(text, list(presets), n=1)
        raise StrategyError(
            f"'{text}' is not a preset ({', '.join(presets)})"
            + (f"; did you mean '{close[0]}'?" if close else "")
            + """ Give a preset name, a strategy object, or one as JSON text such as '{"processors": [{"kind": "top_k", """
            """"top_k": 40}], "selector": {"kind": "sample"}}' (the vLLM plugin reads no strategy files)"""
        )
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StrategyError(f"the strategy's JSON text is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise StrategyError(f"the strategy's JSON text must be an object, got a {type(spec).__name__}")
    try:
        return Strategy.model_validate(spec)
    except ValidationError as exc:
        raise StrategyError(f"the strategy is not valid:\n{validation_message(exc)}") from None


def resolve_strategy(spec: Any) -> Strategy:
    """A request's strategy from its ``extra_args["decoders"]``: a preset name, a dict, or a JSON object as text.

    Raises :class:`~decoders.errors.StrategyError` (a ``ValueError``) in decoders' words: the processor kind, the
    field and its allowed range. Files are never read (a server's client must not name the server's files).

    Example:
        >>> resolve_strategy('{"processors": [{"kind": "top_k", "top_k": 5}], "selector": {"kind": "sample"}}').describe()
        'top_k(5) → sample'
    """
    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, Mapping):
        try:
            text = json.dumps(spec, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise StrategyError(f"the strategy object cannot be read as JSON: {exc}") from None
        return _resolve_text(text)
    if isinstance(spec, str):
        return _resolve_text(spec.strip())
    raise StrategyError(
        f"'{EXTRA_ARG}' must be a preset name, a strategy object, or one as JSON text; got {type(spec).__name__}"
    )


def request_strategy(extra_args: Mapping[str, Any] | None, temperature: float = 1.0) -> Strategy | None:
    """The checked strategy of a request with these ``extra_args`` and vLLM ``temperature``; None if it did not opt in.

    Refused, with a :class:`~decoders.errors.StrategyError` whose message starts with ``decoders:``:

    * a strategy decoders itself refuses (unknown kind, a field out of range, a processor that cannot be built);
    * a search other than ``single`` (vLLM picks one token per request and step; the message names vLLM's own
      equivalent, see :data:`SEARCH_ADVICE`);
    * the ``greedy`` selector with a vLLM temperature above 0, the ``sample`` selector with temperature 0 (vLLM's
      sampler picks the token: greedy is its temperature 0), any other selector.

    Example:
        >>> request_strategy({"decoders": "top_k"}, temperature=1.0).describe()
        'top_k(5) → sample'
        >>> request_strategy({"seed": 1}) is None
        True
    """
    if not extra_args or EXTRA_ARG not in extra_args:
        return None
    try:
        strategy = resolve_strategy(extra_args[EXTRA_ARG])
        check_strategy(strategy, temperature)
    except StrategyError as exc:
        message = str(exc)
        raise StrategyError(message if message.startswith("decoders:") else f"decoders: {message}") from None
    return strategy


def check_strategy(strategy: Strategy, temperature: float = 1.0) -> None:
    """Refuse what cannot run inside vLLM's sampler (see :func:`request_strategy`), and build the chain once."""
    search = strategy.search.kind
    if search != "single":
        advice = SEARCH_ADVICE.get(search, "run it with decoders.generate")
        raise StrategyError(
            f"decoders: the '{search}' search cannot run inside vLLM, whose sampler picks one token per request and "
            f"step; {advice}. Inside vLLM a strategy is processors and a selector (search 'single')"
        )
    selector = strategy.selector.kind
    greedy = temperature is not None and temperature < GREEDY_BELOW
    if selector == "greedy" and not greedy:
        raise StrategyError(
            f"decoders: the strategy's selector is 'greedy' but the request's temperature is {temperature}: vLLM's "
            "sampler picks the token, and picks the most likely one only at temperature 0. Set temperature=0, or "
            'give the strategy "selector": {"kind": "sample"} to sample'
        )
    if selector == "sample" and greedy:
        raise StrategyError(
            "decoders: the strategy's selector is 'sample' but the request's temperature is 0 (greedy): vLLM would "
            "take the most likely token. Set temperature=1 (the strategy's own temperature processor shapes the "
            'distribution), or give the strategy "selector": {"kind": "greedy"}'
        )
    if selector not in ("greedy", "sample"):
        raise StrategyError(
            f"decoders: the '{selector}' selector cannot run inside vLLM, whose sampler picks the token: use 'greedy' "
            "(with temperature=0) or 'sample' (with temperature > 0)"
        )
    strategy.build()  # every processor is constructed: a parameter its config cannot check fails here


# ---- the rows ----------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Request:
    """One opted-in request: its decoders Row, vLLM's live list of its output ids, and how many of them the chain has."""

    row: Row
    outputs: list[int]
    fed: int = 0
    failed: str | None = None


def _extra(params: Any) -> Any:
    extra = getattr(params, "extra_args", None)
    return None if not extra else extra.get(EXTRA_ARG)


class DecodersRows:
    """Follows vLLM's persistent batch and runs each opted-in request's chain on that request's logits row.

    Requests without ``extra_args["decoders"]`` are never touched: with none opted in, :meth:`update` and
    :meth:`apply` return at once; otherwise only the opted-in rows are read and written.

    Args:
        tokenizer: the model's tokenizer, or a callable without arguments that loads it (called once, when the
            first request opts in); processors that read text (DRY's breakers, grammars) need it. None: none.
        eos_token_ids: the model's end-of-sequence ids (grammars need them; a request whose chain fails is ended
            with them).
        seed: the engine's seed. A request without ``SamplingParams.seed`` gets a generator seeded from it and the
            order requests joined in, so that every worker of a tensor/pipeline-parallel engine (each runs its own
            instance) draws the same numbers, as vLLM's own seeding guarantees for its sampler. None: fresh
            randomness.

    Example:
        >>> rows = DecodersRows(eos_token_ids=(2,))
        >>> class Update:  # what vLLM passes: one request at slot 0, opted in
        ...     batch_size, removed, moved = 1, [], []
        ...     added = [(0, type("P", (), {"extra_args": {"decoders": "top_k"}, "seed": 0})(), [5, 6], [])]
        >>> rows.update(Update())
        >>> logits = rows.apply(torch.arange(10.0).repeat(1, 1))
        >>> int(torch.isfinite(logits).sum())  # top_k 5
        5
    """

    def __init__(
        self,
        tokenizer: Any = None,
        eos_token_ids: Sequence[int] = (),
        seed: int | None = None,
    ):
        self._tokenizer = tokenizer
        self._tokenizer_loaded = not callable(tokenizer) or hasattr(tokenizer, "encode")
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
        self.seed = seed
        #: the id that fills a group's left padding and the tokens of rows that got none: the logits' width, an id
        #: no token has (decoders' processors send ids >= V to a spare column), so that padding never matches text
        self.filler = 0
        #: vLLM batch slot → opted-in request (failed ones included, so they follow moves too)
        self.slots: dict[int, _Request] = {}
        #: the chain's rows: the working opted-in requests, in slot order (as of the last apply)
        self.order: list[_Request] = []
        self.mixed: MixedChain | None = None
        self._changed = False
        self._origins = 0
        self._buildable: set[str] = set()  # strategy keys whose chain builds and resets here
        # per-row id buffer: chain row i holds its prompt + outputs in _ids[i, :_lengths[i]] (left-aligned)
        self._ids = torch.zeros((0, 0), dtype=torch.long)
        self._lengths: list[int] = []
        self._plan: list[tuple[Chain, list[int], Any, list[int]]] = []
        self._slot_list: list[int] = []  # the vLLM slot of each chain row
        self._failed_slots: list[int] = []
        self._warned_placeholder = False

    # ---- what vLLM calls ---------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded on first use)."""
        if not self._tokenizer_loaded:
            self._tokenizer_loaded = True
            loader, self._tokenizer = self._tokenizer, None
            try:
                self._tokenizer = loader()
            # a strategy that needs it will say so when it is built
            except Exception as exc:  # noqa: BLE001
                logger.warning("decoders: could not load the model's tokenizer (%s: %s)", type(exc).__name__, exc)
        return self._tokenizer

    def update(self, batch_update: Any) -> None:
        """Follow a ``BatchUpdate`` (None: nothing changed): added, then removed, then moved, as vLLM's own helper
        ``process_dict_updates`` does. An add or a move onto a slot replaces what was there."""
        if batch_update is None:
            return
        slots = self.slots
        for index, params, prompt_ids, output_ids in batch_update.added:
            spec = _extra(params)
            if spec is None:
                if slots.pop(index, None) is not None:
                    self._changed = True
                continue
            slots[index] = self._request(params, spec, prompt_ids, output_ids)
            self._changed = True
        if not slots:
            return
        for index in batch_update.removed:
            if slots.pop(index, None) is not None:
                self._changed = True
        for a, b, direction in batch_update.moved:
            moving, there = slots.pop(a, None), slots.pop(b, None)
            if moving is not None:
                slots[b] = moving
            if there is not None and getattr(direction, "name", direction) == "SWAP":
                slots[a] = there
            if moving is not None or there is not None:
                self._changed = True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Run each opted-in request's chain on its row of ``logits [num_reqs, V]`` (in place; returned)."""
        if not self._changed and not self.order and not self._failed_slots:
            return logits
        self.filler = logits.shape[-1]
        self._feed()  # the tokens of the last step, to the rows that were there
        if self._changed:
            self._changed = False
            try:
                self._follow()
            # a processor that cannot follow its rows: end them, keep the engine serving
            except Exception as exc:  # noqa: BLE001
                self._fail([r for r in self.slots.values() if r.failed is None], f"{type(exc).__name__}: {exc}")
                self.order = []
                self._changed = False
                self._follow()
            self._feed()  # a request that comes back after preemption brings its earlier outputs
        for slot in self._failed_slots:
            self._end(logits, slot)
        if not self.order:
            return logits
        rows = logits.shape[0]
        if self._plan and max(self._slot_list) >= rows:
            raise RuntimeError(
                f"decoders: vLLM gave {rows} rows of logits but an opted-in request is at batch slot "
                f"{max(self._slot_list)}: this vLLM calls logits processors otherwise than the V1 interface "
                "(speculative decoding?); see the plugin's README"
            )
        failed: list[_Request] = []
        for chain, chain_rows, where, prompt_lengths in self._plan:
            part = logits[where] if isinstance(where, slice) else logits.index_select(0, where.to(logits.device))
            input_ids = self._input_ids(chain, chain_rows, prompt_lengths).to(logits.device)
            try:
                scores = chain.run(input_ids, part)
            except Exception as exc:  # noqa: BLE001
                requests = [self.order[i] for i in chain_rows]
                self._fail(requests, f"{type(exc).__name__}: {exc}")
                failed += requests
                continue
            _write(logits, where, scores)
        if failed:
            positions = {id(r): s for s, r in self.slots.items()}
            for request in failed:
                self._end(logits, positions[id(request)])
        return logits

    # ---- requests joining ----------------------------------------------------------------------------------------

    def _request(self, params: Any, spec: Any, prompt_ids: Sequence[int] | None, outputs: list[int]) -> _Request:
        self._origins += 1
        seed = getattr(params, "seed", None)
        generator = torch.Generator()
        if seed is not None:
            generator.manual_seed(int(seed))
        elif self.seed is not None:
            digest = hashlib.blake2b(f"{self.seed}/{self._origins}".encode(), digest_size=8).digest()
            generator.manual_seed(int.from_bytes(digest, "little") >> 1)
        else:
            generator.seed()
        row = Row(origin=self._origins, prompt_ids=list(prompt_ids or ()), generator=generator)
        request = _Request(row, outputs if outputs is not None else [])
        try:
            strategy = resolve_strategy(spec)
            row.strategy, row.group = strategy, strategy_key(strategy)
            self._check_builds(strategy, row.group)
        # validated by the frontend already: what fails here needs the model's tokenizer
        except Exception as exc:  # noqa: BLE001
            self._fail([request], f"{type(exc).__name__}: {exc}")
        return request

    def _check_builds(self, strategy: Strategy, key: str) -> None:
        """Build and start the strategy's chain once per key with this model's tokenizer (DRY's breakers, a
        grammar), so that a failure ends one request rather than vLLM's engine."""
        if key in self._buildable:
            return
        chain = strategy.build()
        chain.reset(DecodeContext(eos_token_ids=self.eos_token_ids, tokenizer=self.tokenizer))
        if len(self._buildable) >= 4096:  # a server that sees endless distinct strategies: forget, check again
            self._buildable.clear()
        self._buildable.add(key)

    def _fail(self, requests: Sequence[_Request], reason: str) -> None:
        """These requests' chains cannot run: log why; their rows are ended (EOS) from now on."""
        if not requests:
            return
        for request in requests:
            request.failed = reason
        strategy = requests[0].row.strategy
        what = f"with strategy {strategy.describe()}" if strategy is not None else "whose strategy cannot be read"
        logger.error("decoders: %d request(s) %s cannot run and are ended with EOS: %s", len(requests), what, reason)
        self._changed = True

    def _end(self, logits: torch.Tensor, slot: int) -> None:
        """End a failed request: only its EOS ids stay (its row is left alone when the model names none)."""
        if self.eos_token_ids and slot < logits.shape[0]:
            logits[slot] = float("-inf")
            logits[slot, list(self.eos_token_ids)] = 0.0

    # ---- following the batch ------------------------------------------------------------------------------------

    def _follow(self) -> None:
        """Turn the slot map into decoders' events: RowsSelected (rows that stay, drops and moves), RowsAdded
        (requests that join, to their strategy's group), then RowsSelected again if slot order needs it."""
        wanted = [(slot, r) for slot, r in sorted(self.slots.items()) if r.failed is None]
        self._failed_slots = [slot for slot, r in sorted(self.slots.items()) if r.failed is not None]
        new = [r for _, r in wanted]
        self._slot_list = [slot for slot, _ in wanted]
        if not new:  # every opted-in request left: start afresh next time (no empty groups kept)
            self.mixed, self.order, self._plan = None, [], []
            self._ids, self._lengths = torch.zeros((0, 0), dtype=torch.long), []
            return
        old = {id(r): i for i, r in enumerate(self.order)}
        kept = [r for r in new if id(r) in old]
        added = [r for r in new if id(r) not in old]
        if self.mixed is None or not kept:
            self.mixed = MixedChain([], [], [])
            self.mixed.reset(DecodeContext(eos_token_ids=self.eos_token_ids, tokenizer=self.tokenizer))
            self._ids, self._lengths = torch.zeros((0, 0), dtype=torch.long), []
        else:
            indices = [old[id(r)] for r in kept]
            if indices != list(range(len(self.order))):
                self._select(indices, kept)
        if added:
            self.mixed.update(RowsAdded(tuple(r.row for r in added), len(kept)))
            self._add_ids(added)
        order = kept + added
        if order != new:
            position = {id(r): i for i, r in enumerate(order)}
            self._select([position[id(r)] for r in new], new)
        self.order = new
        self._make_plan()

    def _select(self, indices: list[int], requests: list[_Request]) -> None:
        index = torch.tensor(indices, dtype=torch.long)
        self.mixed.update(RowsSelected(index, tuple(r.row for r in requests)))
        self._ids = self._ids.index_select(0, index) if len(indices) else self._ids[:0]
        self._lengths = [self._lengths[i] for i in indices]

    def _add_ids(self, added: list[_Request]) -> None:
        width = max([len(r.row.prompt_ids) for r in added] + [self._ids.shape[1], 16])
        grown = torch.zeros((self._ids.shape[0] + len(added), _capacity(width)), dtype=torch.long)
        grown[: self._ids.shape[0], : self._ids.shape[1]] = self._ids
        for offset, request in enumerate(added):
            prompt = request.row.prompt_ids
            grown[self._ids.shape[0] + offset, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
            self._lengths.append(len(prompt))
        self._ids = grown

    def _make_plan(self) -> None:
        """Per group: its chain, its chain rows, where its rows are in vLLM's logits (a slice when contiguous),
        its rows' prompt lengths."""
        plan = []
        for chain, group_rows in zip(self.mixed.chains, self.mixed.group_rows):
            if not group_rows:
                continue
            slots = [self._slot_list[i] for i in group_rows]
            contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
            where = slice(slots[0], slots[-1] + 1) if contiguous else torch.tensor(slots, dtype=torch.long)
            plan.append((chain, list(group_rows), where, [len(self.order[i].row.prompt_ids) for i in group_rows]))
        self._plan = plan

    # ---- tokens --------------------------------------------------------------------------------------------------

    def _new_tokens(self, request: _Request) -> int:
        """How many outputs the chain has not had yet (placeholders of vLLM's async scheduling, -1, wait; a failed
        request gets none)."""
        if request.failed is not None:
            return 0
        outputs = request.outputs
        count = len(outputs) - request.fed
        while count > 0 and outputs[request.fed + count - 1] < 0:
            count -= 1
            if not self._warned_placeholder:
                self._warned_placeholder = True
                logger.warning(
                    "decoders: vLLM gave placeholder output ids (-1, async scheduling): the chain sees each token one "
                    "step late; run vLLM with async_scheduling=False (--no-async-scheduling)"
                )
        return count

    def _feed(self) -> None:
        """Give every chain row the output tokens that appeared since the last apply: its id buffer grows, and
        groups with stateful processors get ``TokensAccepted``. Rows with fewer new tokens than others in a round
        (a prompt still in chunked prefill, a request that just joined) are marked not live for it and given the
        filler id (:attr:`filler`), as :class:`~decoders.processors.base.DecodeContext` says."""
        if not self.order:
            return
        counts = [self._new_tokens(r) for r in self.order]
        most = max(counts)
        if most == 0:
            return
        need = max(length + count for length, count in zip(self._lengths, counts))
        if need > self._ids.shape[1]:
            grown = torch.zeros((self._ids.shape[0], _capacity(need)), dtype=torch.long)
            grown[:, : self._ids.shape[1]] = self._ids
            self._ids = grown
        stateful = [(chain, rows) for chain, rows, _, _ in self._plan if any(p.stateful for p in chain.processors)]
        for step in range(most):
            live = [i for i, count in enumerate(counts) if count > step]
            values = [self.order[i].outputs[self.order[i].fed + step] for i in live]
            index = torch.tensor(live, dtype=torch.long)
            self._ids[index, torch.tensor([self._lengths[i] for i in live], dtype=torch.long)] = torch.tensor(values)
            for i in live:
                self._lengths[i] += 1
            if stateful:
                tokens = torch.full((len(self.order),), self.filler, dtype=torch.long)
                tokens[index] = torch.tensor(values, dtype=torch.long)
                alive = torch.zeros(len(self.order), dtype=torch.bool)
                alive[index] = True
                for chain, rows in stateful:
                    try:
                        self._accept(chain, tokens[rows], alive[rows])
                    except Exception as exc:  # noqa: BLE001
                        self._fail([self.order[i] for i in rows], f"{type(exc).__name__}: {exc}")
        for request, count in zip(self.order, counts):
            request.fed += count

    @staticmethod
    def _accept(chain: Chain, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        if not bool(alive.any()):
            return
        if bool(alive.all()):
            chain.update(TokensAccepted(tokens))
            return
        context, before = chain.context, chain.context.live
        context.live = alive if before is None else before & alive
        try:
            chain.update(TokensAccepted(tokens))
        finally:
            context.live = before

    def _input_ids(self, chain: Chain, rows: list[int], prompt_lengths: list[int]) -> torch.LongTensor:
        """The group's rows' prompt + output ids, left-padded to the longest (the chain's padding set to match)."""
        lengths = [self._lengths[i] for i in rows]
        width = max(lengths)
        first = rows[0]
        contiguous = rows == list(range(first, first + len(rows)))
        block = self._ids[first : first + len(rows)] if contiguous else self._ids.index_select(0, torch.tensor(rows))
        if all(length == width for length in lengths):
            chain.set_padding([0] * len(rows), prompt_lengths)
            return block[:, :width]
        padding = torch.tensor([width - length for length in lengths], dtype=torch.long).unsqueeze(-1)
        columns = torch.arange(width)
        ids = block.gather(1, (columns - padding).clamp(min=0)).masked_fill_(columns < padding, self.filler)
        chain.set_padding(padding.squeeze(-1).tolist(), prompt_lengths)
        return ids


def _write(logits: torch.Tensor, where: slice | torch.Tensor, scores: torch.Tensor | Candidates) -> None:
    """Put a group's processed scores into its rows of ``logits``. A candidate set is written straight into the
    rows (filled with -inf, then its values scattered): no dense copy of the group's rows is made."""
    if isinstance(scores, Candidates):
        values, ids = scores.values, scores.ids
        # padding entries (-inf) may repeat a real entry's id: they take the row's best entry instead, so that the
        # scatter writes each id's real value whatever the order (every row keeps a finite value: the chain checks)
        best = values.argmax(dim=-1, keepdim=True)
        finite = torch.isfinite(values)
        ids = torch.where(finite, ids, ids.gather(1, best))
        values = torch.where(finite, values, values.gather(1, best)).to(logits.dtype)
        if isinstance(where, slice):
            logits[where].fill_(float("-inf")).scatter_(1, ids.to(logits.device), values.to(logits.device))
            return
        scores = values.new_full((values.shape[0], logits.shape[-1]), float("-inf")).scatter_(1, ids, values)
    if isinstance(where, slice):
        logits[where] = scores
    else:
        logits.index_copy_(0, where.to(logits.device), scores.to(logits.dtype))


def _capacity(width: int) -> int:
    """Buffer columns for ``width`` ids: the next power of two (at least 64), so a row grows without copies."""
    return max(64, 1 << (max(width, 1) - 1).bit_length())


def eos_ids(*sources: Any) -> tuple[int, ...]:
    """The EOS ids named by ``sources`` (ints, lists of ints, or None), in order, without repeats."""
    found: list[int] = []
    for source in sources:
        values = source if isinstance(source, (list, tuple, set, frozenset)) else [source]
        for value in values:
            if isinstance(value, int) and not isinstance(value, bool) and value not in found:
                found.append(value)
    return tuple(found)
