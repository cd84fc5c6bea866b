"""Continuous batching: requests join a running batch, every forward pass is shared, rows leave as they end.

    Engine.add(prompt, strategy, …) → a request id (checked at once; queued while ``max_rows`` are in use)
    Engine.step() → each live request advances by one step of its search → the step's RequestEvents
      · searches that take rows while they run (``single``): one shared batch; a request joins it at any step,
        its prompt run beside the others' new tokens, its rows grouped with its strategy's chain
      · other searches (beam, contrastive, speculative, …): the requests that start at one step with the same
        search and options run as one batch of their own, beside the shared one
    Engine.result(id) → the GenerationResult once the request has finished; abort(id) frees its rows

A request's tokens are those ``generate`` gives it alone with the same seed: each row has its own generator and
its own chain state, whatever joins or leaves around it (the model's own arithmetic over a differently padded,
differently sized batch can round a logit in its last bits; see the README). :func:`decoders.generate` and
:func:`decoders.stream` are clients of this engine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from decoders.batch import Batch, Row
from decoders.chain import Chain
from decoders.errors import EngineStopped, GenerationError
from decoders.mixed import MixedChain
from decoders.processors.base import DecodeContext
from decoders.results import GenerationResult, Hypothesis
from decoders.searches.base import Outcome, RowStep, Search, SearchJob, SearchRun
from decoders.session import ModelSession
from decoders.strategy import Strategy
from decoders.text import RowText
from decoders.trace import StepRecord


@dataclass(frozen=True)
class RequestEvent:
    """What one engine step gave one request.

    Args:
        request: the request id.
        step: the request's own step (0 for its first).
        token_id: the newest token (None when the step gave none, e.g. a beam search until its end).
        text: the text that became visible (see :class:`~decoders.results.StepEvent`).
        finished: whether the request has finished.
        record: the step's trace record, when tracing.
        result: the request's :class:`~decoders.results.GenerationResult`, on its last event.
        error: what ended the request instead of a result (e.g. the model gave NaN logits); then ``finished`` is
            True and ``result`` None, and so for every request whose batch the failure stopped.
    """

    request: int
    step: int
    token_id: int | None
    text: str
    finished: bool
    record: StepRecord | None = None
    result: GenerationResult | None = None
    error: Exception | None = None


@dataclass
class Options:
    """The per-request options of :meth:`Engine.add` (and of :func:`decoders.generate`), checked.

    Args:
        max_new_tokens: at most this many new tokens.
        stops: stop strings.
        ignore_eos: keep going after an end-of-sequence token.
        logprobs: top alternatives per token to record (None: off).
        trace: record every step's stages; ``top`` candidates per stage.
        texts: decode the text at every step (streaming); otherwise only at the end (or for stop strings).
    """

    max_new_tokens: int = 64
    stops: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    trace: bool = False
    top: int = 10
    texts: bool = True


@dataclass(eq=False)
class _Request:
    id: int
    prompt: str
    prompt_ids: list[int]
    strategy: Strategy
    search: Search
    options: Options
    generator: torch.Generator | None
    rows: int  # batch rows it takes
    steps: int = 0
    result: GenerationResult | None = None
    group: _Group | None = None
    aborted: bool = False


@dataclass(eq=False)
class _Group:
    """One running search over a batch of rows: the shared batch (open) or one start's requests."""

    job: SearchJob
    run: SearchRun
    requests: list[_Request]  # by origin (the shared batch: by row origin, filled as requests join)
    shared: bool = False
    by_origin: dict[int, _Request] = field(default_factory=dict)


def _strategy_key(strategy: Strategy) -> str:
    return strategy.model_dump_json(exclude={"name", "description"})


class Engine:
    """Continuous batching over one model: add requests at any time, step them all together.

    Args:
        model: None (the embedded default model), a model name or folder, a ``LoadedModel``, or a
            ``(model, tokenizer)`` pair.
        max_rows: the most batch rows in use at once (a beam search's request takes ``num_beams``); requests
            beyond it wait in arrival order. None: no bound.
        texts: decode each step's text (for streaming); False decodes each text once at its end.

    Example:
        >>> engine = decoders.Engine(model=(model, tokenizer))  # doctest: +SKIP
        >>> first = engine.add("Once upon a time", "top_p", seed=0, max_new_tokens=8)  # doctest: +SKIP
        >>> engine.step(); second = engine.add("The cat", "greedy")  # joins the running batch  # doctest: +SKIP
        >>> while engine.pending: engine.step()  # doctest: +SKIP
        >>> engine.result(first).text == decoders.generate("Once upon a time", "top_p", seed=0, max_new_tokens=8).text  # doctest: +SKIP
        True
    """

    def __init__(self, model: Any = None, *, max_rows: int | None = None, texts: bool = True):
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
            raise GenerationError(f"max_rows must be None (no bound) or a whole number ≥ 1, got {max_rows!r}")
        from decoders.models import resolve_model  # transformers is imported on first use

        self.loaded = resolve_model(model)
        self.tokenizer = self.loaded.tokenizer
        self.max_rows = max_rows
        self.texts = texts
        eos = self.loaded.eos_token_ids
        pad = self.tokenizer.pad_token_id
        self.eos_token_ids: tuple[int, ...] = eos
        self.pad_id = pad if pad is not None else (eos[0] if eos else 0)
        self._ids = itertools.count()
        self._origins = itertools.count()
        self._queue: deque[_Request] = deque()
        self._requests: dict[int, _Request] = {}
        self._groups: list[_Group] = []
        self._shared: _Group | None = None
        self._live_rows = 0

    # ---- requests ---------------------------------------------------------------------------------------------

    def add(
        self,
        prompt: str,
        strategy: Any = None,
        *,
        seed: int | None = None,
        max_new_tokens: int = 64,
        chat: bool = False,
        stop: str | Sequence[str] | None = None,
        logprobs: int | None = None,
        ignore_eos: bool = False,
        trace: bool = False,
        top: int = 10,
    ) -> int:
        """Add a request; it starts at the next :meth:`step` (or waits for rows). Returns its id.

        The arguments mean what they mean for :func:`decoders.generate` (one prompt, one strategy, one seed),
        and bad ones raise the same :class:`~decoders.errors.GenerationError` or
        :class:`~decoders.errors.StrategyError`, before anything runs.
        """
        from decoders import driver

        [prompt] = driver.as_prompts(prompt)
        strategy = Strategy.resolve(strategy)
        generator = None if seed is None else torch.Generator().manual_seed(driver.as_seed(seed, "seed"))
        options = driver.check_options(max_new_tokens, stop, ignore_eos, logprobs, trace, top, self.texts)
        search = driver.checked_search(strategy, options)
        [prompt_ids] = driver.encode_prompts(self.tokenizer, [prompt], chat)
        driver.check_request(self.loaded, [prompt_ids], options, search, single=True)
        return self._add(prompt, prompt_ids, strategy, search, options, generator)

    def _add(
        self, prompt: str, prompt_ids: list[int], strategy: Strategy, search: Search, options: Options,
        generator: torch.Generator | None,
    ) -> int:  # fmt: skip
        """Queue a checked request."""
        rows, field = search.rows_per_prompt()
        if self.max_rows is not None and rows > self.max_rows:
            raise GenerationError(
                f"this request takes {rows} rows (its search's {field}) and the engine holds at most "
                f"max_rows={self.max_rows}: lower {field}, or raise max_rows"
            )
        request = _Request(next(self._ids), prompt, prompt_ids, strategy, search, options, generator, rows)
        self._requests[request.id] = request
        if options.max_new_tokens == 0:  # nothing to run
            empty = Hypothesis(text="", generated_ids=[], score=0.0, finish_reason="length")
            request.result = self._result(request, Outcome([empty]))
        else:
            self._queue.append(request)
        return request.id

    def result(self, request: int) -> GenerationResult | None:
        """The request's result once it has finished (None while it runs, and for an aborted request)."""
        found = self._requests.get(request)
        return None if found is None else found.result

    def pop_result(self, request: int) -> GenerationResult | None:
        """The request's result, once it has finished, and the engine forgets the request (a long-running server
        calls it so that finished requests do not pile up); None while it runs."""
        found = self._requests.get(request)
        if found is None or found.result is None:
            return None
        del self._requests[request]
        return found.result

    def abort(self, request: int) -> bool:
        """End a request: it gives no more events and no result, and its rows leave the batch (a request that
        started in a batch of its own with others, as one :func:`generate` call's beam search does, frees its rows
        when that batch ends). Returns whether the request was still queued or running."""
        found = self._requests.get(request)
        if found is None or found.result is not None:
            return False
        del self._requests[request]
        with torch.inference_mode():
            return self._abort(found)

    def _abort(self, found: _Request) -> bool:
        found.aborted = True
        if found in self._queue:
            self._queue.remove(found)
            return True
        group = found.group
        if group is None:
            return True
        if group.shared:
            batch = group.job.batch
            group.job.joins[:] = [row for row in group.job.joins if row.request is not found]
            ended = [index for index, row in enumerate(batch.rows) if row.request is found and not row.finished]
            batch.finish(ended, ["length"] * len(ended))
            batch.drop_finished()
            group.by_origin = {o: r for o, r in group.by_origin.items() if r is not found}
            self._live_rows -= found.rows
        elif all(r.aborted for r in group.requests):
            group.run.close()
            self._groups.remove(group)
            self._live_rows -= sum(r.rows for r in group.requests if r.result is None)
        return True

    @property
    def live_rows(self) -> int:
        """How many batch rows the running requests take."""
        return self._live_rows

    @property
    def queued(self) -> int:
        """How many requests wait for rows."""
        return len(self._queue)

    @property
    def pending(self) -> int:
        """How many requests are queued or running."""
        return sum(1 for r in self._requests.values() if r.result is None and not r.aborted)

    # ---- stepping ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[RequestEvent]:
        """Start the queued requests that fit, then advance every running request by one step of its search.

        Returns the step's events: one per request that got a token or finished.
        """
        self._admit()
        events: list[RequestEvent] = []
        for group in list(self._groups):
            if group.shared and not group.job.joins and not len(group.job.batch):
                continue  # idle
            try:
                steps = next(group.run)
            except StopIteration as stop:
                self._finish_group(group, stop.value, events)
                continue
            except Exception as error:  # noqa: BLE001 - the batch's requests end with the error, the engine goes on
                self._fail_group(group, error, events)
                continue
            for row_step in steps:
                self._report(group, row_step, events)
        return events

    def _admit(self) -> None:
        """Move queued requests (in arrival order) into batches while rows are free."""
        starting: dict[str, list[_Request]] = {}
        while self._queue:
            request = self._queue[0]
            if self.max_rows is not None and self._live_rows + request.rows > self.max_rows:
                break
            self._queue.popleft()
            self._live_rows += request.rows
            if self._joins_shared(request):
                self._join_shared(request)
            else:
                starting.setdefault(self._start_key(request), []).append(request)
        for requests in starting.values():
            self._start_group(requests)

    def _joins_shared(self, request: _Request) -> bool:
        """Whether the request joins the shared batch: its search takes rows while running, and its chain can
        follow rows that leave."""
        if not request.search.joins_running:
            return False
        processors = request.strategy.build().processors
        return all(p.supports("reorder") for p in processors)

    def _start_key(self, request: _Request) -> str:
        """Requests with equal keys that start together run as one batch: same search, same options, and (for a
        search that picks tokens with one selector for all rows) the same selector."""
        options = request.options
        key = [request.search.kind, request.strategy.search.model_dump_json(), repr(options)]
        if not request.search.per_row_chains:
            key.append(request.strategy.selector.model_dump_json())
        return "|".join(key)

    def _context(self, width: int, generators, padding) -> DecodeContext:
        return DecodeContext(
            prompt_length=width, eos_token_ids=self.eos_token_ids, tokenizer=self.tokenizer, generators=generators,
            padding=padding,
        )  # fmt: skip

    def _row(self, request: _Request, origin: int) -> Row:
        options = request.options
        text = RowText(self.tokenizer, options.stops) if options.texts or options.stops else None
        return Row(
            origin=origin, prompt_ids=request.prompt_ids, generator=request.generator, strategy=request.strategy,
            group=_strategy_key(request.strategy), request=request, max_new_tokens=options.max_new_tokens,
            eos_token_ids=frozenset() if options.ignore_eos else frozenset(self.eos_token_ids), stops=options.stops,
            logprobs=options.logprobs, trace=options.trace, top=options.top, text=text,
        )  # fmt: skip

    def _job(self, session: ModelSession, chain: Any, batch: Batch, options: Options, **extra: Any) -> SearchJob:
        return SearchJob(
            session=session, chain=chain, batch=batch, tokenizer=self.tokenizer,
            max_new_tokens=options.max_new_tokens,
            eos_token_ids=frozenset() if options.ignore_eos else frozenset(self.eos_token_ids),
            stops=list(options.stops), texts=options.texts, trace=options.trace, top=options.top,
            logprobs=options.logprobs, **extra,
        )  # fmt: skip

    def _join_shared(self, request: _Request) -> None:
        """Queue the request's row to join the shared batch at its next step (creating that batch if needed)."""
        if self._shared is None:
            session = ModelSession(self.loaded.model, [], self.pad_id, 0)
            chain = MixedChain([], [], [])
            chain.reset(self._context(0, None, None))
            batch = Batch([], session, [chain])
            job = self._job(session, chain, batch, Options(max_new_tokens=1, texts=self.texts), joins=[], open=True)
            from decoders.searches.single import SingleSearch

            self._shared = _Group(job, SingleSearch().run(job), [], shared=True)
            self._groups.insert(0, self._shared)
        origin = next(self._origins)
        request.group = self._shared
        self._shared.by_origin[origin] = request
        self._shared.job.joins.append(self._row(request, origin))

    def _start_group(self, requests: list[_Request]) -> None:
        """Start a batch of its own for requests that share a search and options."""
        first = requests[0]
        options = first.options
        keys = [_strategy_key(r.strategy) for r in requests]
        members: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            members.setdefault(key, []).append(index)
        if len(members) == 1:
            chain: Chain | MixedChain = first.strategy.build()
        else:
            chains = [requests[rows[0]].strategy.build() for rows in members.values()]
            chain = MixedChain(chains, list(members.values()), list(members))
        search = first.search
        prompt_ids = [r.prompt_ids for r in requests]
        width = max(map(len, prompt_ids))
        generators = [r.generator for r in requests] if any(r.generator is not None for r in requests) else None
        chain.reset(self._context(width, generators, [width - len(ids) for ids in prompt_ids]))
        session = ModelSession(self.loaded.model, prompt_ids, self.pad_id, options.max_new_tokens)
        rows = [self._row(r, origin) for origin, r in enumerate(requests)]
        batch = Batch(rows, session, [chain])
        job = self._job(session, chain, batch, options)
        group = _Group(job, search.run(job), list(requests), by_origin=dict(enumerate(requests)))
        for request in requests:
            request.group = group
        self._groups.append(group)

    # ---- events and results -------------------------------------------------------------------------------------

    def _report(self, group: _Group, row_step: RowStep, events: list[RequestEvent]) -> None:
        request = group.by_origin.get(row_step.row.origin)
        if request is None or request.aborted:
            return
        result = None
        if row_step.outcome is not None:
            result = request.result = self._result(request, row_step.outcome)
            self._live_rows -= request.rows
            del group.by_origin[row_step.row.origin]
        events.append(
            RequestEvent(
                request.id, request.steps, row_step.token_id, row_step.text, row_step.finished, row_step.record, result
            )
        )
        request.steps += 1

    def _finish_group(self, group: _Group, outcomes: list[Outcome], events: list[RequestEvent]) -> None:
        self._groups.remove(group)
        if group is self._shared:
            self._shared = None
        for origin, outcome in enumerate(outcomes):
            request = group.by_origin.get(origin)
            if request is None or request.aborted or request.result is not None:
                continue
            request.result = self._result(request, outcome)
            self._live_rows -= request.rows
            events.append(RequestEvent(request.id, request.steps, None, "", True, None, request.result))

    def _fail_group(self, group: _Group, error: Exception, events: list[RequestEvent]) -> None:
        self._groups.remove(group)
        if group is self._shared:
            self._shared = None
        for request in group.by_origin.values():
            if request.aborted or request.result is not None:
                continue
            self._live_rows -= request.rows
            del self._requests[request.id]
            events.append(RequestEvent(request.id, request.steps, None, "", True, error=error))

    def _result(self, request: _Request, outcome: Outcome) -> GenerationResult:
        best = outcome.hypotheses[0]
        return GenerationResult(
            prompt=request.prompt, text=best.text, prompt_ids=list(request.prompt_ids),
            generated_ids=best.generated_ids, finish_reason=best.finish_reason, score=best.score,
            alternatives=outcome.hypotheses, logprobs=best.logprobs, steps=outcome.steps, beam_steps=outcome.beam_steps,
        )  # fmt: skip


class AsyncEngine:
    """An :class:`Engine` driven from asyncio: a background thread steps it while requests are pending, and
    each request's events arrive on its own queue. Adding checks the request at once (bad input raises in the
    caller); a stream that is closed early (a client gone) aborts its request and frees its rows.

    Args:
        engine: the engine to drive (one thread steps it; do not step it elsewhere).

    Example:
        >>> runner = AsyncEngine(decoders.Engine(model=(model, tokenizer)))  # doctest: +SKIP
        >>> async for event in runner.stream("Once upon a time", "top_p", seed=0):  # doctest: +SKIP
        ...     print(event.text, end="")
        >>> runner.close()  # doctest: +SKIP
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._queues: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="decoders-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt: str, strategy: Any = None, **options: Any) -> tuple[int, asyncio.Queue]:
        """Add a request (the arguments of :meth:`Engine.add`); its id and the queue its events arrive on.

        Call it from a running event loop: the events are delivered on that loop.
        """
        if self._closed:
            raise EngineStopped(self._stopped_message())
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        with self._lock:
            request = self.engine.add(prompt, strategy, **options)
            result = self.engine.result(request)
            if result is None:
                self._queues[request] = (loop, queue)
        if result is not None:  # nothing to run (max_new_tokens 0)
            self.engine.pop_result(request)
            queue.put_nowait(RequestEvent(request, 0, None, "", True, None, result))
        self._wake.set()
        return request, queue

    async def stream(self, prompt: str, strategy: Any = None, **options: Any) -> AsyncIterator[RequestEvent]:
        """The request's events as they come; the last one carries its result. Closing the iterator early aborts
        the request."""
        request, queue = self.submit(prompt, strategy, **options)
        ended = False
        try:
            while not ended:  # a row may end a step before its search decides its result (speculative decoding)
                event = await queue.get()
                ended = event.result is not None or event.error is not None
                if event.error is not None:
                    raise event.error
                yield event
        finally:
            if not ended:
                self.abort(request)

    async def generate(self, prompt: str, strategy: Any = None, **options: Any) -> GenerationResult:
        """Run one request to its end (sharing every step with the other requests); its result."""
        async for event in self.stream(prompt, strategy, **options):
            if event.result is not None:
                return event.result
        raise GenerationError("the request ended without a result")

    def abort(self, request: int) -> bool:
        """End a request and free its rows (see :meth:`Engine.abort`)."""
        with self._lock:
            self._queues.pop(request, None)
            return self.engine.abort(request)

    @property
    def pending(self) -> int:
        """Requests queued or running."""
        with self._lock:
            return self.engine.pending

    def close(self) -> None:
        """Stop the background thread (pending requests end without results)."""
        self._closed = True
        self._wake.set()
        self._thread.join()

    def _work(self) -> None:
        try:
            while not self._closed:
                with self._lock:
                    busy = self.engine.pending > 0
                    if busy:
                        self._deliver(self.engine.step())
                if not busy:
                    self._wake.wait()
                    self._wake.clear()
        except BaseException as error:  # a failure outside any batch: nothing can step any more
            logging.getLogger("decoders.engine").error("the engine's thread stopped", exc_info=error)
            self._error, self._closed = error, True
            stopped = EngineStopped(self._stopped_message())
            targets, self._queues = list(self._queues.items()), {}
            for request, (loop, queue) in targets:
                loop.call_soon_threadsafe(queue.put_nowait, RequestEvent(request, 0, None, "", True, error=stopped))

    def _stopped_message(self) -> str:
        cause = "" if self._error is None else f" ({type(self._error).__name__}; it was logged)"
        return f"the engine has stopped{cause}: start a new one"

    @property
    def alive(self) -> bool:
        """Whether the stepping thread runs (False after a failure or :meth:`close`)."""
        return self._thread.is_alive() and not self._closed

    def _deliver(self, events: list[RequestEvent]) -> None:
        for event in events:
            target = self._queues.get(event.request)
            if target is not None:
                target[0].call_soon_threadsafe(target[1].put_nowait, event)
            if event.result is not None or event.error is not None:
                self._queues.pop(event.request, None)
                self.engine.pop_result(event.request)  # the event carries the result: nothing to keep
