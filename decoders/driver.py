"""The autoregressive loop: prompts in, a chain choosing every token, text out.

    prompts → token ids, left-padded → one prefill forward (KV cache, last position's logits only)
            → per step: chain.run → chain.choose → append → one forward pass of the one new token

:func:`stream` yields a :class:`StepEvent` per step; :func:`generate` runs the same loop to its end and
returns the :class:`Generations`. The model is called with keyword arguments only (``input_ids``,
``attention_mask``, ``position_ids``, the KV cache, ``use_cache``, ``logits_to_keep``), whichever of them
its ``forward`` names, so any causal LM with that interface works, transformers or not.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel

from decoders.errors import GenerationError
from decoders.processors.base import DecodeContext
from decoders.strategy import Strategy
from decoders.trace import StepRecord, step_records

FinishReason = Literal["eos", "length", "stop"]
#: decoding options used for every text the driver returns (the exact text the model wrote)
_DECODE = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}


class GenerationResult(BaseModel):
    """What the model wrote for one prompt.

    Args:
        prompt: the prompt as given (before any chat template).
        text: the generated continuation only, decoded without special tokens; cut before a stop string.
        prompt_ids: the prompt's token ids (chat template and the tokenizer's special tokens included).
        generated_ids: every generated token id, the EOS id included when the model wrote one, and the
            tokens of a stop string included (only ``text`` is cut).
        finish_reason: ``"eos"`` (the model wrote an end-of-sequence token), ``"stop"`` (a stop string
            appeared), or ``"length"`` (``max_new_tokens`` reached).
        steps: one :class:`StepRecord` per generated token when tracing, else None.

    Example:
        >>> result = decoders.generate(["Hi", "Hello"], model=(model, tokenizer))[1]  # doctest: +SKIP
        >>> result.finish_reason, len(result.generated_ids)  # doctest: +SKIP
        ('length', 64)
    """

    prompt: str
    text: str
    prompt_ids: list[int]
    generated_ids: list[int]
    finish_reason: FinishReason
    steps: list[StepRecord] | None = None


class Generations(list):
    """The results of one :func:`generate` call, one :class:`GenerationResult` per prompt, in order.

    ``text``, ``generated_ids``, ``prompt_ids`` and ``finish_reason`` read the only result when there is
    exactly one, so ``generate("Hi").text`` works; with several, index first: ``generate(["a", "b"])[1].text``.

    Example:
        >>> results = decoders.generate(["Once", "The"], model=(model, tokenizer), max_new_tokens=4)  # doctest: +SKIP
        >>> [r.finish_reason for r in results], results[1].prompt  # doctest: +SKIP
        (['length', 'length'], 'The')
    """

    def _only(self, field: str) -> GenerationResult:
        if len(self) != 1:
            raise GenerationError(
                f"these generations hold {len(self)} results, so .{field} is ambiguous: "
                f"index one first, e.g. results[0].{field}, or use [r.{field} for r in results]"
            )
        return self[0]

    @property
    def text(self) -> str:
        return self._only("text").text

    @property
    def generated_ids(self) -> list[int]:
        return self._only("generated_ids").generated_ids

    @property
    def prompt_ids(self) -> list[int]:
        return self._only("prompt_ids").prompt_ids

    @property
    def finish_reason(self) -> FinishReason:
        return self._only("finish_reason").finish_reason


@dataclass(frozen=True)
class StepEvent:
    """One generation step of the whole batch, as :func:`stream` yields it; the last event holds the results.

    The final event comes after the last step (also when ``max_new_tokens`` is 0): its ``results`` is the
    :class:`Generations`, its ``step`` the number of steps run, ``token_ids`` all None, ``texts`` all empty
    and ``finished`` all True. Every other event has ``results`` None.

    Args:
        step: index of the generated token (0 for the first new token).
        token_ids: the token chosen for each row, None for rows that had already finished.
        texts: the text each row's new token made decodable (``""`` when nothing new, e.g. half of a
            multi-byte character, or text held back because it may be the start of a stop string). A row's
            texts, concatenated over all events, equal its final ``text``.
        finished: whether each row has finished (at this step or before).
        records: per row, that step's :class:`StepRecord` when tracing (None for finished rows); None when
            tracing is off.
        results: the :class:`Generations`, on the final event only.

    Example:
        >>> for event in decoders.stream("Once upon a time", "balanced", seed=0):  # doctest: +SKIP
        ...     print(event.texts[0], end="", flush=True)
        ...     if event.results is not None:
        ...         print(" →", event.results.finish_reason)
    """

    step: int
    token_ids: list[int | None]
    texts: list[str]
    finished: list[bool]
    records: list[StepRecord | None] | None = None
    results: Generations | None = None


@dataclass
class _ModelPair:
    """A caller's ``(model, tokenizer)``, with the attributes the driver reads from a ``LoadedModel``.

    Unlike ``LoadedModel`` it needs no transformers config, so any model with the forward interface works.
    """

    model: Any
    tokenizer: Any
    name: str

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The tokenizer's EOS id and the generation config's, without repeats."""
        from decoders.models import eos_token_ids_of

        return eos_token_ids_of(self.model, self.tokenizer)

    @property
    def context_length(self) -> int | None:
        from decoders.models import context_length_of

        return context_length_of(self.model)


def _resolve_model(model: Any) -> Any:
    if model is None or isinstance(model, (str, Path)):
        from decoders.models import load_model

        return load_model(None if model is None else str(model))
    if isinstance(model, tuple) and len(model) == 2:
        return _ModelPair(
            model[0],
            model[1],
            getattr(getattr(model[0], "config", None), "name_or_path", "") or type(model[0]).__name__,
        )
    if hasattr(model, "model") and hasattr(model, "tokenizer"):
        return model
    raise GenerationError(
        f"model must be None (the embedded default), a model name or folder, a LoadedModel, or a (model, tokenizer) "
        f"tuple; got {type(model).__name__}"
    )


class _Forward:
    """Calls the model with the argument names its ``forward`` uses (looked up once, not per step)."""

    def __init__(self, model: Any):
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.cache_name = "cache" if "cache" in params else "past_key_values"
        self.takes_positions = "position_ids" in params
        keep = next((name for name in ("logits_to_keep", "num_logits_to_keep") if name in params), None)
        self.options = {"use_cache": True, **({keep: 1} if keep else {})}

    def __call__(self, input_ids, attention_mask, position_ids, cache) -> tuple[torch.Tensor, Any]:
        """Logits of the last position ``[B, V]`` and the updated cache."""
        kwargs = dict(self.options, input_ids=input_ids, attention_mask=attention_mask)
        if self.takes_positions:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self.cache_name] = cache
        output = self.model(**kwargs)
        cache = getattr(output, "cache", None)
        if cache is None:
            cache = getattr(output, "past_key_values", None)
        if cache is None:
            raise GenerationError(
                f"{type(self.model).__name__} returned no KV cache for use_cache=True; the driver feeds one token per "
                "step and needs it: use a causal LM that supports caching"
            )
        return output.logits[:, -1, :], cache


def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


class _RowText:
    """The text of one row, decoded incrementally (a few tokens at a time, never the whole sequence).

    A token's text is taken only once it decodes cleanly (no trailing U+FFFD from half a UTF-8 character);
    with stop strings, text that may be the start of one is held back until it is clear.
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
        return self.tokenizer.decode(ids, **_DECODE)

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


def _as_prompts(prompts: str | Sequence[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise GenerationError("no prompts given: pass a string or a non-empty list of strings")
    for index, prompt in enumerate(prompts):
        label = "the prompt" if len(prompts) == 1 else f"prompt {index}"
        if not isinstance(prompt, str):
            raise GenerationError(f"{label} is a {type(prompt).__name__}, not a string: pass text")
        if not prompt:
            raise GenerationError(f"{label} is empty: give at least one character of text (whitespace counts)")
    return prompts


def _as_stops(stop: str | Sequence[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stops):
        raise GenerationError(f"stop strings must be non-empty strings, got {stops!r}: remove the empty ones")
    return stops


def _generators(seed: int | Sequence[int] | None, rows: int) -> list[torch.Generator] | None:
    if seed is None:
        return None
    seeds = list(seed) if isinstance(seed, Sequence) else [int(seed) + row for row in range(rows)]
    if len(seeds) != rows:
        raise GenerationError(
            f"got {len(seeds)} seeds for {rows} prompts: pass one seed per prompt, or one int (row i then uses seed + i)"
        )
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


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


class _Generation:
    """One call: its inputs, validated when it is made (before the model runs), and the loop's state.

    ``texts=False`` skips decoding each step's text unless stop strings need it (what :func:`generate` does).
    """

    def __init__(
        self,
        prompts: str | Sequence[str],
        strategy: Any,
        model: Any,
        *,
        max_new_tokens: int,
        seed: int | Sequence[int] | None,
        stop: str | Sequence[str] | None,
        chat: bool,
        trace: bool,
        top: int,
        ignore_eos: bool,
        texts: bool,
    ):
        self.prompts = _as_prompts(prompts)
        self.stops = _as_stops(stop)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise GenerationError(f"max_new_tokens must be a whole number ≥ 0, got {max_new_tokens!r}")
        if trace and top < 1:
            raise GenerationError(f"top must be ≥ 1 to trace, got {top}")
        self.max_new_tokens, self.trace, self.top, self.ignore_eos = max_new_tokens, trace, top, ignore_eos
        self.generators = _generators(seed, len(self.prompts))
        self.chain = Strategy.resolve(strategy).build()
        self.loaded = _resolve_model(model)
        self.tokenizer = self.loaded.tokenizer
        self.prompt_ids = encode_prompts(self.tokenizer, self.prompts, chat)
        self._check_lengths()
        self.rows_text = [_RowText(self.tokenizer, self.stops) for _ in self.prompts] if texts or self.stops else None

    def _check_lengths(self) -> None:
        context = self.loaded.context_length
        for index, ids in enumerate(self.prompt_ids):
            label = "the prompt" if len(self.prompts) == 1 else f"prompt {index}"
            if not ids:
                raise GenerationError(f"{label} gave no tokens: give text the tokenizer can encode")
            if context is not None and len(ids) + self.max_new_tokens > context:
                raise GenerationError(
                    f"{label} has {len(ids)} token{'s' if len(ids) != 1 else ''} and max_new_tokens is {self.max_new_tokens}: "
                    f"{len(ids) + self.max_new_tokens} > the model's context length of {context} tokens; "
                    f"shorten the prompt or lower max_new_tokens to {max(context - len(ids), 0)}"
                )

    # ---- the loop -----------------------------------------------------------------------------------------

    def events(self) -> Iterator[StepEvent]:
        """One event per step while any row runs, then the final event with the results."""
        self._start()
        step = 0
        while step < self.max_new_tokens and not all(self.finished):
            yield self._advance(step)
            step += 1
        rows = len(self.prompts)
        yield StepEvent(step, [None] * rows, [""] * rows, [True] * rows, results=self._collect())

    @torch.inference_mode()
    def _start(self) -> None:
        """Left-pad the prompts into preallocated buffers, reset the chain, prefill the cache."""
        rows, width = len(self.prompt_ids), max(map(len, self.prompt_ids))
        eos = self.loaded.eos_token_ids
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (eos[0] if eos else 0)
        self.eos = set() if self.ignore_eos else set(eos)
        self.prompt_length = width
        model = self.loaded.model
        device = _device(model)
        total = width + self.max_new_tokens
        self.ids = torch.full((rows, total), self.pad_id, dtype=torch.long)
        self.mask = torch.ones((rows, total), dtype=torch.long)
        for row, ids in enumerate(self.prompt_ids):
            self.ids[row, width - len(ids) : width] = torch.tensor(ids)
            self.mask[row, : width - len(ids)] = 0
        self.ids, self.mask = self.ids.to(device), self.mask.to(device)
        self.padded = bool((self.mask[:, :width] == 0).any())
        positions = (self.mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        self.finished = [False] * rows
        self.finished_mask = torch.zeros(rows, dtype=torch.bool, device=device)
        self.reasons: list[FinishReason] = ["length"] * rows
        self.counts = [0] * rows
        self.records: list[list[StepRecord]] | None = [[] for _ in range(rows)] if self.trace else None
        self.chain.reset(
            DecodeContext(
                prompt_length=width, eos_token_ids=eos, tokenizer=self.tokenizer, generators=self.generators,
                padding=[width - len(ids) for ids in self.prompt_ids],
            )  # fmt: skip
        )
        if self.max_new_tokens == 0:
            return
        self.forward = _Forward(model)
        self.logits, self.cache = self.forward(self.ids[:, :width], self._mask(width), positions, None)
        self.next_positions = positions[:, -1:] + 1

    def _mask(self, length: int) -> torch.Tensor | None:
        return self.mask[:, :length] if self.padded else None

    @torch.inference_mode()
    def _advance(self, step: int) -> StepEvent:
        """Pick one token per row (after one forward pass of the previous token, past the first step)."""
        length = self.prompt_length + step
        if step:
            self.logits, self.cache = self.forward(
                self.ids[:, length - 1 : length], self._mask(length), self.next_positions, self.cache
            )
            self.next_positions = self.next_positions + 1
        logits = self.logits.float()
        stages = [("model", logits)] if self.trace else None
        observer = (
            (lambda index, processor, before, after: stages.append((processor.kind, after))) if self.trace else None
        )
        scores = self.chain.run(self.ids[:, :length], logits, observer)
        tokens = self.chain.choose(scores, self.generators)
        if any(self.finished):
            tokens = tokens.masked_fill(self.finished_mask, self.pad_id)
        self.ids[:, length] = tokens
        self.chain.accept(tokens)

        active = [row for row, done in enumerate(self.finished) if not done]
        records: list[StepRecord | None] | None = None
        if self.trace:
            records = [None] * len(self.finished)
            for record in step_records(step, stages, tokens, self.tokenizer, rows=active, top=self.top):
                records[record.row] = record
                self.records[record.row].append(record)
        token_ids: list[int | None] = [None] * len(self.finished)
        texts = [""] * len(self.finished)
        chosen = tokens.tolist()
        last_step = step == self.max_new_tokens - 1
        for row in active:
            token_ids[row] = token = chosen[row]
            self.counts[row] += 1
            row_text = self.rows_text[row] if self.rows_text else None
            if row_text is not None:
                row_text.push(token)
            if token in self.eos:
                self._finish(row, "eos")
            elif row_text is not None and row_text.stop_at is not None:
                self._finish(row, "stop")
            elif last_step:
                self._finish(row, "length")
            if row_text is not None:
                texts[row] = row_text.take(final=self.finished[row])
        return StepEvent(step, token_ids, texts, list(self.finished), records)

    def _finish(self, row: int, reason: FinishReason) -> None:
        self.finished[row] = True
        self.finished_mask[row] = True
        self.reasons[row] = reason
        if self.rows_text and reason != "stop":
            self.rows_text[row].flush()

    def _collect(self) -> Generations:
        start = self.prompt_length
        generated = [self.ids[row, start : start + count].tolist() for row, count in enumerate(self.counts)]
        if self.rows_text:
            texts = [row_text.final_text for row_text in self.rows_text]
        else:
            texts = self.tokenizer.batch_decode(generated, **_DECODE)
        return Generations(
            GenerationResult(
                prompt=prompt,
                text=text,
                prompt_ids=list(prompt_ids),
                generated_ids=ids,
                finish_reason=self.reasons[row],
                steps=self.records[row] if self.records is not None else None,
            )
            for row, (prompt, text, prompt_ids, ids) in enumerate(zip(self.prompts, texts, self.prompt_ids, generated))
        )


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
) -> Iterator[StepEvent]:
    """Generate step by step: one :class:`StepEvent` per step, then a final event carrying the results.

    Bad input raises :class:`GenerationError` at once, when ``stream`` is called; the model runs as the
    events are taken.

    Args:
        prompts: one prompt or a list of prompts (a batch, left-padded). An empty string is an error;
            whitespace is a valid prompt.
        strategy: anything :meth:`Strategy.resolve` accepts: a preset name, a Strategy, a dict, or a path to
            a ``.json``/``.toml`` file; None is greedy.
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

    Example:
        >>> events = list(decoders.stream(["Hi", "Hello"], "top_k", model=(model, tokenizer), seed=0))  # doctest: +SKIP
        >>> ["".join(e.texts[1] for e in events) == events[-1].results[1].text]  # doctest: +SKIP
        [True]
    """
    run = _Generation(
        prompts, strategy, model, max_new_tokens=max_new_tokens, seed=seed, stop=stop, chat=chat, trace=trace, top=top,
        ignore_eos=ignore_eos, texts=True,
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
) -> Generations:
    """Generate a continuation of each prompt with a decoding strategy; the arguments are :func:`stream`'s.

    Returns:
        :class:`Generations`: one :class:`GenerationResult` per prompt, in order.

    Example:
        >>> decoders.generate("Once upon a time", "top_p", seed=0).text  # doctest: +SKIP
        ' there was a little girl named Lily...'
        >>> [r.finish_reason for r in decoders.generate(["a", "b"], max_new_tokens=4)]  # doctest: +SKIP
        ['length', 'length']
    """
    run = _Generation(
        prompts, strategy, model, max_new_tokens=max_new_tokens, seed=seed, stop=stop, chat=chat, trace=trace, top=top,
        ignore_eos=ignore_eos, texts=False,
    )  # fmt: skip
    for event in run.events():
        if event.results is not None:
            return event.results
    raise AssertionError("the generation loop ended without its final event")
