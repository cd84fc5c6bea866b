"""The server's side of the engine: chat prompts, requests added off the event loop, and a bounded queue.

* :class:`ServingEngine` is an :class:`~decoders.engine.Engine` whose ``add`` also takes chat ``messages``
  (a whole conversation, rendered by the tokenizer's chat template; ``Engine.add(chat=True)`` wraps one user
  message) and whose ``max_new_tokens=None`` means the room left in the model's context.
* :class:`ServingRunner` is an :class:`~decoders.engine.AsyncEngine` that adds requests from a worker thread (adding
  waits for the engine's lock, which a step holds: the event loop keeps streaming meanwhile), delivers the events of
  several requests on one queue, forgets each finished request (an engine keeps every result until asked), and
  ends every waiting request with an error if its stepping thread dies.
* :class:`Admission` bounds the work: at most ``max_rows`` batch rows run and at most ``queue`` requests wait for
  rows (the engine's own arrival-order rule, mirrored); beyond that a request is refused (429) or, with
  ``policy="wait"``, waits in the server before it reaches the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

import torch

from decoders.engine import AsyncEngine, Engine, RequestEvent
from decoders.errors import DecodersError, EngineStopped, GenerationError
from decoders.strategy import Strategy

#: chat's default ``max_new_tokens`` when the model does not say its context length
UNKNOWN_CONTEXT_MAX_TOKENS = 1024


class QueueFull(DecodersError):
    """Every row is in use and the queue of waiting requests is full."""


def encode_messages(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[str, list[int]]:
    """A conversation as the model reads it: the chat template's text (with the assistant's turn opened) and its ids.

    The ids are those ``Engine.add(content, chat=True)`` gives for one user message (the template's text,
    tokenized without adding special tokens again).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise GenerationError(
            "this model's tokenizer has no chat template, so /v1/chat/completions cannot render messages: use "
            "/v1/completions with a prompt, or serve an instruction-tuned model"
        )
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - the template's own refusal (jinja's raise_exception), e.g. roles out of order
        raise GenerationError(f"the model's chat template refused these messages: {exc}") from None
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]


class ServingEngine(Engine):
    """An :class:`~decoders.engine.Engine` that also takes a whole conversation.

    Args:
        model: as for :class:`~decoders.engine.Engine`.
        max_rows: as for :class:`~decoders.engine.Engine`.

    Example:
        >>> engine = ServingEngine((model, tokenizer), max_rows=8)  # doctest: +SKIP
        >>> engine.add("", "greedy", messages=[{"role": "user", "content": "Hi"}], max_new_tokens=None)  # doctest: +SKIP
        0
    """

    def add(
        self, prompt: str, strategy: Any = None, *, messages: list[dict[str, Any]] | None = None, **options: Any
    ) -> int:
        """:meth:`Engine.add`, and with ``messages`` the chat template's rendering of them (``prompt`` unused);
        ``max_new_tokens=None``: the room left in the context."""
        if messages is None and options.get("max_new_tokens", 0) is not None:
            return super().add(prompt, strategy, **options)
        from decoders import driver

        seed, max_new_tokens = options.pop("seed", None), options.pop("max_new_tokens", None)
        strategy = Strategy.resolve(strategy)
        generator = None if seed is None else torch.Generator().manual_seed(driver.as_seed(seed, "seed"))
        if messages is None:
            [prompt] = driver.as_prompts(prompt)
            [prompt_ids] = driver.encode_prompts(self.tokenizer, [prompt], options.pop("chat", False))
        else:
            prompt, prompt_ids = encode_messages(self.tokenizer, messages)
        if max_new_tokens is None:
            context = self.loaded.context_length
            max_new_tokens = max(context - len(prompt_ids), 1) if context else UNKNOWN_CONTEXT_MAX_TOKENS
        checked = driver.check_options(
            max_new_tokens, options.get("stop"), options.get("ignore_eos", False), options.get("logprobs"),
            options.get("trace", False), options.get("top", 10), self.texts,
        )  # fmt: skip
        search = driver.checked_search(strategy, checked)
        driver.check_request(self.loaded, [prompt_ids], checked, search, single=True)
        return self._add(prompt, prompt_ids, strategy, search, checked, generator)

    @property
    def records(self) -> int:
        """Requests the engine holds a record of: queued, running, or finished and not yet forgotten."""
        return len(self._requests)


class ServingRunner(AsyncEngine):
    """An :class:`~decoders.engine.AsyncEngine` for a server: requests are added off the event loop, several
    requests' events arrive on one queue, and finished requests are forgotten.

    Args:
        engine: the :class:`ServingEngine` to drive.

    Example:
        >>> runner = ServingRunner(ServingEngine(loaded, max_rows=16))  # doctest: +SKIP
        >>> events = asyncio.Queue()  # doctest: +SKIP
        >>> [request] = await runner.open([{"prompt": "Once upon a time", "strategy": "top_p", "seed": 0}], events)  # doctest: +SKIP
        >>> (await events.get()).request == request  # doctest: +SKIP
        True
    """

    async def open(self, requests: list[dict[str, Any]], events: asyncio.Queue) -> list[int]:
        """Add requests (each the keyword arguments of :meth:`ServingEngine.add`) at once, so that they start at the
        same step; their events are put on ``events``. Returns their ids. Bad arguments raise here, before anything
        runs (and none of them is added); a caller cancelled meanwhile aborts them."""
        if self._closed:
            raise EngineStopped(self._stopped_message())
        loop = asyncio.get_running_loop()

        def add() -> tuple[list[int], list[RequestEvent]]:
            added, done = [], []
            with self._lock:
                try:
                    for options in requests:
                        request = self.engine.add(**options)
                        added.append(request)
                        result = self.engine.result(request)
                        if result is None:
                            self._queues[request] = (loop, events)
                        else:  # nothing to run: its only event, and the engine forgets it
                            done.append(RequestEvent(request, 0, None, "", True, None, result))
                            self.engine.pop_result(request)
                except BaseException:
                    for request in added:
                        self._queues.pop(request, None)
                        self.engine.abort(request)
                    raise
            self._wake.set()
            return added, done

        adding = loop.run_in_executor(None, add)
        try:
            added, done = await asyncio.shield(adding)
        except asyncio.CancelledError:
            adding.add_done_callback(lambda future: future.exception() or [self.abort(r) for r in future.result()[0]])
            raise
        for event in done:
            events.put_nowait(event)
        return added

    def _deliver(self, events: Sequence[RequestEvent]) -> None:
        """Each event to its queue. A request ends at its event with a result or an error: a search can mark a row
        finished a step before its result comes (speculative decoding does), and that event is passed on as not
        finished. A finished request's result is popped from the engine (the event carries it)."""
        for event in events:
            final = event.finished and (event.result is not None or event.error is not None)
            target = self._queues.get(event.request)
            if target is None:
                continue
            if event.finished and not final:
                event = dataclasses.replace(event, finished=False)
            target[0].call_soon_threadsafe(target[1].put_nowait, event)
            if final:
                del self._queues[event.request]
                self.engine.pop_result(event.request)

    def _stopped_message(self) -> str:
        cause = "" if self._error is None else f" ({type(self._error).__name__}; the server logged it)"
        return f"the engine has stopped{cause}: restart the server"


class Admission:
    """A bounded queue in front of the engine: at most ``max_rows`` rows run, at most ``queue`` requests wait.

    It mirrors the engine's rule (requests start in arrival order while their rows fit), so it knows how many
    requests would wait. A request (all the engine requests of one HTTP request, together) that would make more
    than ``queue`` wait is refused with :class:`QueueFull`, or with ``policy="wait"`` waits here, in arrival
    order, until it fits.

    Args:
        max_rows: the engine's ``max_rows``.
        queue: the most engine requests waiting for rows (0: none wait).
        policy: ``"reject"`` (429) or ``"wait"``.

    Example:
        >>> admission = Admission(max_rows=2, queue=1, policy="reject")
        >>> tickets = asyncio.run(admission.enter([1, 1, 1]))  # two run, one waits
        >>> admission.running, admission.waiting
        (2, 1)
    """

    def __init__(self, max_rows: int, queue: int, policy: str = "reject"):
        if policy not in ("reject", "wait"):
            raise GenerationError(f"the queue policy is reject or wait, got {policy!r}")
        self.max_rows, self.queue, self.policy = max_rows, queue, policy
        self._tickets = itertools.count()
        self._running: dict[int, int] = {}
        self._rows = 0
        self._waiting: OrderedDict[int, int] = OrderedDict()
        self._held: deque[tuple[asyncio.Future, list[int]]] = deque()

    @property
    def running(self) -> int:
        """Engine requests with rows."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Engine requests waiting for rows in the engine."""
        return len(self._waiting)

    @property
    def held(self) -> int:
        """HTTP requests waiting in the server (``policy="wait"``) for room in the queue."""
        return len(self._held)

    def _fits(self, rows: list[int]) -> bool:
        waiting, used = len(self._waiting), self._rows
        for count in rows:
            if waiting == 0 and used + count <= self.max_rows:
                used += count
            else:
                waiting += 1
        return waiting <= self.queue

    def _take(self, rows: list[int]) -> list[int]:
        tickets = []
        for count in rows:
            ticket = next(self._tickets)
            tickets.append(ticket)
            if not self._waiting and self._rows + count <= self.max_rows:
                self._running[ticket] = count
                self._rows += count
            else:
                self._waiting[ticket] = count
        return tickets

    async def enter(self, rows: list[int]) -> list[int]:
        """Tickets for engine requests taking ``rows`` rows each; raises :class:`QueueFull` (or waits) when full."""
        for count in rows:
            if count > self.max_rows:
                raise GenerationError(
                    f"this request takes {count} rows (its search's num_beams or n) and the server runs at most "
                    f"{self.max_rows} rows at once (its --max-rows): ask for fewer"
                )
        if not self._held and self._fits(rows):
            return self._take(rows)
        if self.policy == "reject":
            raise QueueFull(
                f"the server is busy: {self.max_rows} rows are in use and {len(self._waiting)} requests wait (at most "
                f"{self.queue}); retry later"
            )
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        entry = (future, rows)
        self._held.append(entry)
        try:
            return await future
        except asyncio.CancelledError:
            if entry in self._held:
                self._held.remove(entry)
            elif future.done() and not future.cancelled():
                for ticket in future.result():
                    self.leave(ticket)
            raise

    def leave(self, ticket: int) -> None:
        """An engine request has ended: its rows are free (or it leaves the queue)."""
        if ticket in self._running:
            self._rows -= self._running.pop(ticket)
        else:
            self._waiting.pop(ticket, None)
        while self._waiting:
            first, count = next(iter(self._waiting.items()))
            if self._rows + count > self.max_rows:
                break
            del self._waiting[first]
            self._running[first] = count
            self._rows += count
        while self._held and self._fits(self._held[0][1]):
            future, rows = self._held.popleft()
            if not future.done():
                future.set_result(self._take(rows))
