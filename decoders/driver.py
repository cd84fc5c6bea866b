"""generate / stream: validate the inputs, then run them as requests of a private :class:`~decoders.engine.Engine`.

    inputs (prompts, strategy, model, lengths, seeds) → checked before the model runs
      → one engine request per prompt, all added before the first step (so they start together: the single
        search's rows share one batch, each strategy's rows one chain; other searches run the call as one batch)
      → engine steps → step events → GenerationResult per prompt

:func:`stream` yields a :class:`StepEvent` per step; :func:`generate` runs the same loop to its end and
returns the :class:`Generations`. Any causal LM with the keyword interface of :mod:`decoders.session` works,
transformers or not. The checks here are the engine's too (:meth:`Engine.add <decoders.engine.Engine.add>`).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from pydantic import ValidationError

from decoders.errors import GenerationError, StrategyError, validation_message
from decoders.results import Generations, StepEvent
from decoders.searches.base import Search
from decoders.strategy import Strategy


def as_prompts(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, bytes | bytearray):
        raise GenerationError("the prompt is bytes, not text: decode it first, e.g. prompt.decode('utf-8')")
    if isinstance(prompts, str):
        prompts = [prompts]
    elif isinstance(prompts, Sequence):
        prompts = list(prompts)
    else:
        raise GenerationError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise GenerationError("no prompts given: pass a string or a non-empty list of strings")
    for index, prompt in enumerate(prompts):
        label = "the prompt" if len(prompts) == 1 else f"prompt {index}"
        if isinstance(prompt, bytes | bytearray):
            raise GenerationError(f"{label} is bytes, not text: decode it first, e.g. prompt.decode('utf-8')")
        if not isinstance(prompt, str):
            raise GenerationError(f"{label} is a {type(prompt).__name__}, not a string: pass text")
        if not prompt:
            raise GenerationError(f"{label} is empty: give at least one character of text (whitespace counts)")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise GenerationError(
                f"{label} is not valid text: character {exc.start} is an undecodable byte "
                f"({prompt[exc.start]!r}); give UTF-8 text (check the terminal's or the file's encoding)"
            ) from None
    return prompts


def as_stops(stop: str | Sequence[str] | None) -> list[str]:
    if stop is not None and not isinstance(stop, str | Sequence):
        raise GenerationError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stops):
        raise GenerationError(f"stop strings must be non-empty strings, got {stops!r}: remove the empty ones")
    return stops


#: the seeds a torch.Generator takes
SEED_RANGE = (0, 2**64 - 1)


def as_seed(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise GenerationError(f"{what} must be a whole number, got {value!r}")
    try:
        seed = operator.index(value)
    except TypeError:
        raise GenerationError(f"{what} must be a whole number, got {value!r} ({type(value).__name__})") from None
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise GenerationError(f"{what} must be from {low} to 2**64 - 1 = {high}, got {seed}")
    return seed


def _generators(seed: int | Sequence[int] | None, rows: int) -> list[torch.Generator] | None:
    if seed is None:
        return None
    if isinstance(seed, str | bytes):
        raise GenerationError(f"seed must be a whole number or a list of them, got {seed!r}")
    if isinstance(seed, Sequence):
        seeds = [as_seed(s, f"seed {i}") for i, s in enumerate(seed)]
        if len(seeds) != rows:
            raise GenerationError(
                f"got {len(seeds)} seeds for {rows} prompts: pass one seed per prompt, or one int (row i then uses seed + i)"
            )
    else:
        first = as_seed(seed, "seed")
        if first + rows - 1 > SEED_RANGE[1]:
            raise GenerationError(
                f"seed {first} + {rows - 1} (row i uses seed + i) is past 2**64 - 1: use a smaller seed or one seed per prompt"
            )
        seeds = [first + row for row in range(rows)]
    return [torch.Generator().manual_seed(s) for s in seeds]


def as_strategies(strategy: Any, rows: int) -> list[Strategy]:
    """One resolved strategy per row: the same for all, or one per prompt when ``strategy`` is a list."""
    if not isinstance(strategy, list | tuple):
        return [Strategy.resolve(strategy)] * rows
    if len(strategy) != rows:
        raise GenerationError(
            f"got {len(strategy)} strategies for {rows} prompt{'s' if rows != 1 else ''}: pass one strategy per "
            "prompt, or one strategy (not a list) for all of them"
        )
    resolved = []
    for index, spec in enumerate(strategy):
        try:
            resolved.append(Strategy.resolve(spec))
        except StrategyError as exc:
            raise StrategyError(f"strategy {index}: {exc}") from None
        except ValidationError as exc:  # a bad field: say which strategy of the list it is in
            raise StrategyError(f"strategy {index}: {validation_message(exc)}") from None
    return resolved


def _row_ranges(rows: list[int]) -> str:
    """``"0-3, 5"`` for rows [0, 1, 2, 3, 5]."""
    spans: list[list[int]] = []
    for row in rows:
        if spans and row == spans[-1][1] + 1:
            spans[-1][1] = row
        else:
            spans.append([row, row])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def _describe_search(config: Any) -> str:
    """``kind`` or ``kind(name=value, …)`` with the settings that differ from the defaults."""
    fields = type(config).model_fields
    changed = [f"{k}={v!r}" for k, v in config.model_dump().items() if k != "kind" and v != fields[k].default]
    return f"{config.kind}({', '.join(changed)})" if changed else config.kind


def _check_searches(strategies: list[Strategy]) -> None:
    """Refuse a call whose strategies use different searches (a mixed batch runs one search over its rows)."""
    searches: dict[str, list[int]] = {}
    for row, chosen in enumerate(strategies):
        searches.setdefault(chosen.search.model_dump_json(), []).append(row)
    if len(searches) > 1:
        described = "; ".join(
            f"{_describe_search(strategies[members[0]].search)} (row{'s' if len(members) > 1 else ''} "
            f"{_row_ranges(sorted(members))})"
            for members in searches.values()
        )
        raise GenerationError(
            f"a mixed batch runs one search over all its rows, and these strategies use different searches: "
            f"{described}. Give every strategy the same search (and settings), or make one call per search"
        )


def checked_search(strategy: Strategy, options: Any, *, streaming: bool = False) -> Search:
    """The strategy's search, checked against its chain and the options (stop strings; streaming for
    :func:`stream`, which shows tokens as they are chosen)."""
    search = strategy.build_search()
    strategy.build()  # the chain: its processors and selector checked (and against the search) once, here
    if streaming and not search.streams:
        raise GenerationError(
            f"the '{search.kind}' search cannot stream: its hypotheses are only decided at the end. "
            "Use decoders.generate() (the CLI's --no-stream), or a search that streams such as 'single'"
        )
    if options.stops and not search.stop_strings:
        raise GenerationError(
            f"the '{search.kind}' search does not take stop strings: leave stop out and cut the texts afterwards"
        )
    return search


def check_options(
    max_new_tokens: Any, stop: Any, ignore_eos: bool, logprobs: Any, trace: bool, top: Any, texts: bool
) -> Any:
    """The per-request options, checked (:class:`~decoders.engine.Options`)."""
    from decoders.engine import Options

    stops = as_stops(stop)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens must be a whole number ≥ 0, got {max_new_tokens!r}")
    if trace and top < 1:
        raise GenerationError(f"top must be ≥ 1 to trace, got {top}")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
        raise GenerationError(
            f"logprobs must be None (off) or a whole number ≥ 0 of top alternatives per token, got {logprobs!r}"
        )
    return Options(max_new_tokens, tuple(stops), bool(ignore_eos), logprobs, bool(trace), top, texts)


def encode_prompts(tokenizer: Any, prompts: list[str], chat: bool) -> list[list[int]]:
    """Token ids of each prompt, as generation feeds them to the model (the chat template applied if ``chat``)."""
    if not chat:
        return tokenizer(prompts)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise GenerationError(
            "chat=True needs a tokenizer with a chat template, and this one has none: use chat=False, or an "
            "instruction-tuned model"
        )
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


#: the share of the memory available now that one call (or one engine request) may plan to use
MEMORY_SHARE = 0.75
#: float32 copies of a row's logits a step may hold at once (model output, log-softmax, processed scores, totals…)
LOGIT_COPIES = 8


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_request(loaded: Any, prompt_ids: list[list[int]], options: Any, search: Search, *, single: bool = False) -> None:
    """Everything about a call that needs the model, checked before anything runs: lengths against the context,
    ``logprobs`` against the vocabulary, the rows against the memory, and the search's own needs."""
    check_lengths(loaded, prompt_ids, options.max_new_tokens, single=single)
    vocab = loaded.vocab_size
    if options.logprobs is not None and vocab is not None and options.logprobs > vocab:
        raise GenerationError(
            f"logprobs={options.logprobs} asks for more alternatives than the vocabulary has ({vocab} tokens): "
            f"use at most {vocab}"
        )
    check_memory(loaded, prompt_ids, options.max_new_tokens, search)
    search.prepare(loaded)


def check_memory(loaded: Any, prompt_ids: list[list[int]], max_new_tokens: int, search: Search) -> None:
    """Refuse a call whose KV cache and logits would not fit the memory available, naming the largest setting
    that fits (the search's width, e.g. ``num_beams``, or ``max_new_tokens``)."""
    kv, vocab, free = loaded.kv_bytes_per_token, loaded.vocab_size, available_memory()
    if not kv or not vocab or not free:
        return
    width, field = search.rows_per_prompt()
    prompts, columns = len(prompt_ids), max(map(len, prompt_ids)) + max_new_tokens
    budget = MEMORY_SHARE * free

    def need(rows_per_prompt: int, new_tokens: int) -> float:
        columns = max(map(len, prompt_ids)) + new_tokens
        return prompts * rows_per_prompt * (columns * kv + LOGIT_COPIES * 4 * vocab)

    if need(width, max_new_tokens) <= budget:
        return
    gib = 2**30
    asked = f"{prompts * width} rows × {columns} columns need about {need(width, max_new_tokens) / gib:.1f} GiB"
    room = f"{free / gib:.1f} GiB of memory is available"
    if field is not None and need(1, max_new_tokens) <= budget:
        fits = int(budget // need(1, max_new_tokens))
        raise GenerationError(f"{field}={width}: {asked} of KV cache and logits, and {room}; at most {field}={fits} fits")
    fits = next((n for n in (2**k for k in range(30, -1, -1)) if n < max_new_tokens and need(width, n) <= budget), 0)
    advice = f"lower max_new_tokens to {fits} or fewer" if fits else "give fewer prompts"
    raise GenerationError(f"max_new_tokens={max_new_tokens}: {asked} of KV cache and logits, and {room}; {advice}")


def check_lengths(loaded: Any, prompt_ids: list[list[int]], max_new_tokens: int, *, single: bool = False) -> None:
    """Refuse a prompt that gave no tokens, or that leaves no room for ``max_new_tokens`` in the model's context."""
    context = loaded.context_length
    for index, ids in enumerate(prompt_ids):
        label = "the prompt" if single or len(prompt_ids) == 1 else f"prompt {index}"
        if not ids:
            raise GenerationError(f"{label} gave no tokens: give text the tokenizer can encode")
        if context is not None and len(ids) + max_new_tokens > context:
            over = len(ids) + max_new_tokens - context
            if len(ids) >= context:
                advice = f"the prompt alone fills the context: shorten it by at least {over} tokens"
            else:
                advice = f"shorten the prompt by at least {over} tokens, or lower max_new_tokens to {context - len(ids)}"
            raise GenerationError(
                f"{label} has {len(ids)} token{'s' if len(ids) != 1 else ''} and max_new_tokens is {max_new_tokens}: "
                f"{len(ids) + max_new_tokens} > the model's context length of {context} tokens; {advice}"
            )


class _Generation:
    """One call: its inputs, validated when it is made (before the model runs), then its engine's steps.

    ``texts=False`` skips decoding each step's text unless stop strings need it (what :func:`generate` does).
    """

    def __init__(self, prompts: Any, strategy: Any, model: Any, *, seed: Any, chat: bool, texts: bool, **options: Any):
        from decoders.engine import Engine

        self.prompts = as_prompts(prompts)
        rows = len(self.prompts)
        self.options = check_options(texts=texts, **options)
        generators = _generators(seed, rows)
        strategies = as_strategies(strategy, rows)
        _check_searches(strategies)
        searches = {}
        for index, chosen in enumerate(strategies):
            key = chosen.model_dump_json(exclude={"name", "description"})
            if key not in searches:
                searches[key] = checked_search(chosen, self.options, streaming=texts)
        self._check_one_selector(strategies, searches)
        self.engine = Engine(model, texts=texts)
        prompt_ids = encode_prompts(self.engine.tokenizer, self.prompts, chat)
        for search in searches.values():
            check_request(self.engine.loaded, prompt_ids, self.options, search)
        self.ids = [
            self.engine._add(
                prompt, ids, chosen, searches[chosen.model_dump_json(exclude={"name", "description"})], self.options,
                None if generators is None else generators[index],
            )  # fmt: skip
            for index, (prompt, ids, chosen) in enumerate(zip(self.prompts, prompt_ids, strategies))
        ]

    @staticmethod
    def _check_one_selector(strategies: list[Strategy], searches: dict[str, Search]) -> None:
        """A search that picks tokens with one selector for the whole batch needs the same selector in every row."""
        search = next(iter(searches.values()))
        if search.per_row_chains:
            return
        kinds = {s.selector.model_dump_json() for s in strategies}
        if len(kinds) > 1:
            names = ", ".join(sorted({s.selector.kind for s in strategies}))
            raise StrategyError(
                f"the '{search.kind}' search: the rows of this batch use different selectors ({names}), and this "
                "search picks tokens with one selector for the whole batch: give every row the same selector, or "
                "split the call"
            )

    def events(self) -> Iterator[StepEvent]:
        """The step events, then the final event with the results."""
        engine, rows = self.engine, len(self.prompts)
        place = {request: row for row, request in enumerate(self.ids)}
        finished = [engine.result(request) is not None for request in self.ids]
        step = 0  # the engine steps in inference mode; the caller's code between events does not
        while engine.pending:
            events = engine.step()
            shown = [event for event in events if event.token_id is not None or event.text]
            for event in events:
                if event.error is not None:
                    raise event.error
                finished[place[event.request]] |= event.finished
            if not shown:
                continue
            token_ids: list[int | None] = [None] * rows
            texts = [""] * rows
            records = [None] * rows if self.options.trace else None
            for event in shown:
                row = place[event.request]
                token_ids[row], texts[row] = event.token_id, event.text
                if records is not None:
                    records[row] = event.record
            yield StepEvent(step, token_ids, texts, list(finished), records)
            step += 1
        results = Generations(engine.result(request) for request in self.ids)
        steps = max((len(h.generated_ids) for r in results for h in r.alternatives), default=0)
        yield StepEvent(steps, [None] * rows, [""] * rows, [True] * rows, results=results)


def stream(
    prompts: str | Sequence[str],
    strategy: Any = None,
    model: Any = None,
    *,
    max_new_tokens: int = 64,
    seed: int | Sequence[int] | None = None,
    stop: str | Sequence[str] | None = None,
    chat: bool = False,
    trace: bool = False,
    top: int = 10,
    ignore_eos: bool = False,
    logprobs: int | None = None,
) -> Iterator[StepEvent]:
    """Generate step by step: one :class:`StepEvent` per step, then a final event carrying the results.

    Bad input raises :class:`GenerationError` at once, when ``stream`` is called; the model runs as the
    events are taken. A search that decides its hypotheses only at the end (beam search) cannot stream and
    is refused here: use :func:`generate`.

    Args:
        prompts: one prompt or a list of prompts (a batch, left-padded). An empty string is an error;
            whitespace is a valid prompt.
        strategy: anything :meth:`Strategy.resolve` accepts: a preset name, a Strategy, a dict, or a path to
            a ``.json``/``.toml`` file; None is greedy. A list gives one strategy per prompt (a mixed batch: the
            rows share every forward pass, each strategy's chain runs on its own rows, and a row's tokens,
            score, log-probabilities and trace are exactly what a call with its strategy for every prompt
            gives it, seeds included: row ``i`` still uses ``seed + i``). The strategies must share one search
            and its settings (e.g. all ``single``); a search other than single, contrastive and best-of also
            needs one selector for all. A list of wrong length, or of different searches, is an error.
        model: None (the embedded default model), a model name or folder (see ``decoders.load_model``), a
            LoadedModel, or a ``(model, tokenizer)`` tuple.
        max_new_tokens: at most this many tokens per prompt (0 returns empty texts without running the
            model); prompt tokens + max_new_tokens must fit the model's context.
        seed: None draws from torch's global generator (``torch.manual_seed`` makes that repeatable); an int
            gives row ``i`` its own generator seeded with ``seed + i``; a list gives one seed per prompt. With
            per-row generators a row's tokens depend only on its prompt, strategy and seed (and on the model's
            numerics, which are the same whatever else is in the batch as long as the padding is the same).
        stop: a string or strings; a row ends when its generated text contains one, and the text is cut
            before it.
        chat: wrap each prompt as a user message with the tokenizer's chat template.
        trace: record every step's stages (see :class:`StepRecord`); off costs nothing.
        top: how many candidates per stage a trace keeps.
        ignore_eos: keep generating after an end-of-sequence token (for benchmarks: every row then runs
            exactly ``max_new_tokens`` steps unless a stop string ends it).
        logprobs: None (off, no cost), or ``n ≥ 0``: each result's ``logprobs`` then holds, per generated
            token, its log-probability under the raw model and under the processed distribution, and the
            ``n`` most likely tokens under the raw model with both of theirs.

    Example:
        >>> events = list(decoders.stream(["Hi", "Hello"], "top_k", model=(model, tokenizer), seed=0))  # doctest: +SKIP
        >>> ["".join(e.texts[1] for e in events) == events[-1].results[1].text]  # doctest: +SKIP
        [True]
    """
    run = _Generation(
        prompts, strategy, model, max_new_tokens=max_new_tokens, seed=seed, stop=stop, chat=chat, trace=trace, top=top,
        ignore_eos=ignore_eos, logprobs=logprobs, texts=True,
    )  # fmt: skip
    return run.events()


def generate(
    prompts: str | Sequence[str],
    strategy: Any = None,
    model: Any = None,
    *,
    max_new_tokens: int = 64,
    seed: int | Sequence[int] | None = None,
    stop: str | Sequence[str] | None = None,
    chat: bool = False,
    trace: bool = False,
    top: int = 10,
    ignore_eos: bool = False,
    logprobs: int | None = None,
) -> Generations:
    """Generate a continuation of each prompt with a decoding strategy; the arguments are :func:`stream`'s.

    Returns:
        :class:`Generations`: one :class:`GenerationResult` per prompt, in order.

    Example:
        >>> decoders.generate("Once upon a time", "top_p", seed=0).text  # doctest: +SKIP
        ' there was a little girl named Lily...'
        >>> [r.finish_reason for r in decoders.generate(["a", "b"], max_new_tokens=4)]  # doctest: +SKIP
        ['length', 'length']
        >>> sweep = decoders.generate(["Once"] * 3, ["greedy", "top_k", "top_p"], seed=0)  # doctest: +SKIP
        >>> sweep[2].text == decoders.generate(["Once"] * 3, "top_p", seed=0)[2].text  # doctest: +SKIP
        True
    """
    run = _Generation(
        prompts, strategy, model, max_new_tokens=max_new_tokens, seed=seed, stop=stop, chat=chat, trace=trace, top=top,
        ignore_eos=ignore_eos, logprobs=logprobs, texts=False,
    )  # fmt: skip
    for event in run.events():
        if event.results is not None:
            return event.results
    raise AssertionError("the generation loop ended without its final event")
