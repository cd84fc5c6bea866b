"""The ``decoders`` command line: generate, explain, compare, plugins, schema, cache.

Every command takes ``--json`` for machine-readable output; errors are one clear line, never a traceback.
"""

from __future__ import annotations

import copy
import inspect
import json
import sys
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from decoders.errors import DecodersError, GenerationError, validation_message
from decoders.plugins import get_registry
from decoders.builtins import PRESETS, GreedyConfig, SampleConfig
from decoders.strategy import Strategy, StrategyError, is_json_text

app = typer.Typer(
    name="decoders",
    help="Decoding strategies for causal language models, made explicit: generate, explain, compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's help: option names are never cut, and flags show no type
    context_settings={"max_content_width": 120, "terminal_width": 120},
)
console = Console()
error_console = Console(stderr=True, soft_wrap=True)  # one message, one line, whatever the width


def version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"decoders {version('decoders-lab')}\n")
        raise typer.Exit()


@app.callback()
def common(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Decoding strategies for causal language models, made explicit: generate, explain, compare."""

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def emit_json(data: object) -> None:
    """Print ``data`` as JSON on standard output (UTF-8, not escaped)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub id, local folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)."),
]
StrategyOption = Annotated[
    str | None, typer.Option("--strategy", "-s", help=f"A preset ({', '.join(PRESETS)}, or a plugin's), a .json/.toml strategy file, or a strategy as JSON text.")
]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Seed for sampling (row i of a batch uses seed + i).")]
ChatOption = Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the tokenizer's chat template.")]


def load(model_name: str | None):
    """Load a model with a status line on stderr."""
    from decoders.models import load_model

    with error_console.status(f"loading {model_name or 'the embedded model'}…"):
        return load_model(model_name)


def visible(text: str) -> str:
    """Text with newlines and tabs shown as escapes, so whitespace the model generated can be seen."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def percent(probability: float) -> str:
    return f"{probability * 100:6.2f}%"


SearchOption = Annotated[
    str | None,
    typer.Option(
        "--search",
        help="The search: single (default), beam, contrastive, stochastic_beam, best_of, or a plugin's kind.",
    ),
]
NumBeamsOption = Annotated[int | None, typer.Option("--num-beams", help="Beam search: running hypotheses per prompt.")]
LengthPenaltyOption = Annotated[
    float | None, typer.Option("--length-penalty", help="Beam search: scores are divided by length ** this.")
]
EarlyStoppingOption = Annotated[
    str | None, typer.Option("--early-stopping", help="Beam search: true, false or never (transformers' meanings).")
]
PenaltyAlphaOption = Annotated[
    float | None, typer.Option("--penalty-alpha", help="Contrastive search: weight of the degeneration penalty (with --top-k).")
]
ReturnSequencesOption = Annotated[
    int | None, typer.Option("--num-return-sequences", help="Beam search: ranked hypotheses per prompt (≤ beams).")
]
PromptLookupOption = Annotated[
    int | None,
    typer.Option("--prompt-lookup-num-tokens", help="Speculative decoding by prompt lookup: tokens drafted per step (e.g. 10)."),
]
AssistantModelOption = Annotated[
    str | None,
    typer.Option("--assistant-model", help="Speculative decoding with this draft model (name, folder or .gguf; same vocabulary)."),
]


#: the search a parameter flag implies when --search is not given (and the strategy's own search is single)
FLAG_SEARCH = {
    "num_beams": "beam", "length_penalty": "beam", "early_stopping": "beam", "num_return_sequences": "beam",
    "num_beam_groups": "beam", "diversity_penalty": "beam",
    "penalty_alpha": "contrastive", "top_k": "contrastive", "n": "best_of", "rank_by": "best_of",
    "prompt_lookup_num_tokens": "speculative", "max_matching_ngram_size": "speculative",
    "assistant_model": "speculative", "num_assistant_tokens": "speculative", "num_assistant_tokens_schedule": "speculative",
}  # fmt: skip


def with_search(chosen: Strategy, search: str | None, *, user_strategy: bool = True, **flags: object) -> Strategy:
    """``chosen`` with the search named by --search and its parameter flags (the strategy's own search if none).

    Without --search, the flags say which search is meant (--num-beams: beam, --penalty-alpha: contrastive, --n:
    best_of). When the user chose no strategy (``user_strategy`` False), the search gets the selector it needs: a
    search that samples the sample selector, one that refuses the default's selector (contrastive search picks by
    its own score) the greedy one.
    """
    given = {name: value for name, value in flags.items() if value is not None}
    if search is None and not given:
        return chosen
    if search is None:
        implied = sorted({FLAG_SEARCH[name] for name in given})
        if chosen.search.kind != "single":
            search = chosen.search.kind
        elif len(implied) == 1:
            search = implied[0]
        else:
            raise StrategyError(f"these flags belong to different searches ({', '.join(implied)}): add --search")
    if "early_stopping" in given:
        value = str(given["early_stopping"]).strip().lower()
        if value not in ("true", "false", "never"):
            raise StrategyError(f"--early-stopping must be true, false or never, got {given['early_stopping']!r}")
        given["early_stopping"] = {"true": True, "false": False}.get(value, value)
    current = chosen.search.model_dump() if chosen.search.kind == search else {}
    result = Strategy.model_validate({**chosen.model_dump(exclude_none=True), "search": {**current, **given, "kind": search}})
    if not user_strategy:
        if result.build_search().samples:
            return result.model_copy(update={"selector": SampleConfig()})
        try:
            result.build()
        except StrategyError:
            return result.model_copy(update={"selector": GreedyConfig()})
    return result


#: the processor flags of ``generate``: flag name → (processor kind, config field), in transformers' order
PROCESSOR_FLAGS = {
    "repetition_penalty": ("repetition_penalty", "repetition_penalty"),
    "no_repeat_ngram_size": ("no_repeat_ngram", "no_repeat_ngram_size"),
    "temperature": ("temperature", "temperature"),
    "top_k": ("top_k", "top_k"),
    "top_p": ("top_p", "top_p"),
    "min_p": ("min_p", "min_p"),
    "typical_p": ("typical_p", "typical_p"),
}
#: the flags that make a strategy sample (the penalties alone keep it greedy)
SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p", "typical_p")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def flags_strategy(strategy: str | None, model_defaults: bool, loaded, **flags: float | int | None) -> Strategy:
    """The strategy named by --strategy, --model-defaults, or the parameter flags (one of the three).

    Each flag becomes one processor, checked on its own, so a bad value is reported with the flag's name.
    """
    given = {name: value for name, value in flags.items() if value is not None}
    chosen = [bool(strategy), model_defaults, bool(given)]
    if sum(chosen) > 1:
        raise StrategyError("use one of --strategy, --model-defaults, or parameter flags such as --temperature, not several")
    if model_defaults:
        config = loaded.generation_config
        if config is None:
            raise StrategyError(f"model {loaded.name} ships no generation_config.json; pick a --strategy instead")
        return Strategy.from_generation_config(config)
    if not given:
        return Strategy.resolve(strategy)
    registry = get_registry()
    processors = []
    for name, (kind, field) in PROCESSOR_FLAGS.items():
        if name not in given:
            continue
        try:
            processors.append(registry.processors[kind].config.model_validate({"kind": kind, field: given[name]}))
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            message = message.replace("leave the processor out", f"leave {_flag(name)} out")
            raise StrategyError(f"{_flag(name)} {given[name]}: {message}") from None
    sampling = any(name in given for name in SAMPLING_FLAGS)
    return Strategy(processors=processors, selector={"kind": "sample" if sampling else "greedy"})


@app.command()
def generate(
    prompts: Annotated[
        list[str] | None,
        typer.Argument(help="One or more prompts (a batch); none: one read from standard input.", show_default=False, metavar="PROMPT"),
    ] = None,
    model: ModelOption = None,
    strategy: StrategyOption = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (> 0).")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Keep the k most likely tokens (contrastive search: its candidates per step).")
    ] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus: keep mass p.")] = None,
    min_p: Annotated[float | None, typer.Option(help="Keep tokens with p ≥ min_p × max p.")] = None,
    typical_p: Annotated[float | None, typer.Option(help="Locally typical sampling mass.")] = None,
    repetition_penalty: Annotated[float | None, typer.Option(help="Penalise tokens already seen (> 1).")] = None,
    no_repeat_ngram_size: Annotated[int | None, typer.Option(help="Forbid repeating n-grams of this size.")] = None,
    model_defaults: Annotated[bool, typer.Option("--model-defaults", help="Use the model's generation_config.json.")] = False,
    seed: SeedOption = None,
    max_new_tokens: Annotated[int, typer.Option(help="Stop after this many new tokens.")] = 64,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop when this text is generated (repeatable).")] = None,
    stream: Annotated[bool | None, typer.Option("--stream/--no-stream", help="Print tokens as they come (default: on for one prompt).")] = None,
    search: SearchOption = None,
    num_beams: NumBeamsOption = None,
    length_penalty: LengthPenaltyOption = None,
    early_stopping: EarlyStoppingOption = None,
    num_return_sequences: ReturnSequencesOption = None,
    num_beam_groups: Annotated[
        int | None, typer.Option("--num-beam-groups", help="Diverse beam search: groups of beams (divides --num-beams).")
    ] = None,
    diversity_penalty: Annotated[
        float | None, typer.Option("--diversity-penalty", help="Diverse beam search: penalty per earlier group's choice.")
    ] = None,
    penalty_alpha: PenaltyAlphaOption = None,
    n: Annotated[int | None, typer.Option("--n", help="best_of: samples per prompt.")] = None,
    rank_by: Annotated[str | None, typer.Option("--rank-by", help="best_of: rank samples by their sum or mean log-prob.")] = None,
    prompt_lookup_num_tokens: PromptLookupOption = None,
    max_matching_ngram_size: Annotated[
        int | None, typer.Option("--max-matching-ngram-size", help="Prompt lookup: longest n-gram matched (default 2).")
    ] = None,
    assistant_model: AssistantModelOption = None,
    num_assistant_tokens: Annotated[
        int | None, typer.Option("--num-assistant-tokens", help="Draft model: tokens drafted per step (default 20).")
    ] = None,
    num_assistant_tokens_schedule: Annotated[
        str | None,
        typer.Option("--num-assistant-tokens-schedule", help="Speculative: heuristic (default: adapt the draft length) or constant."),
    ] = None,
    logprobs: Annotated[
        int | None, typer.Option("--logprobs", help="Add per-token log-probabilities and this many alternatives to --json.")
    ] = None,
    chat: ChatOption = False,
    as_json: JsonOption = False,
) -> None:
    """Generate a continuation of each prompt with a decoding strategy."""
    import decoders

    if not prompts:
        if sys.stdin is None or sys.stdin.isatty():
            raise GenerationError(
                'give a prompt: decoders generate "Once upon a time", or pipe one in: echo "Once upon a time" | '
                "decoders generate"
            )
        prompts = [sys.stdin.read().removesuffix("\n")]

    flags = dict(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
    )  # fmt: skip
    search_flags = dict(
        num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
        num_return_sequences=num_return_sequences, num_beam_groups=num_beam_groups, diversity_penalty=diversity_penalty,
        penalty_alpha=penalty_alpha, n=n, rank_by=rank_by, prompt_lookup_num_tokens=prompt_lookup_num_tokens,
        max_matching_ngram_size=max_matching_ngram_size, assistant_model=assistant_model,
        num_assistant_tokens=num_assistant_tokens, num_assistant_tokens_schedule=num_assistant_tokens_schedule,
    )  # fmt: skip
    if search == "contrastive" or (search is None and penalty_alpha is not None):
        search_flags["top_k"] = flags.pop("top_k")  # contrastive search's own top_k, not a processor
    user_strategy = bool(strategy or model_defaults or any(v is not None for v in flags.values()))
    if not model_defaults:  # check the strategy before spending seconds on loading the model
        chosen = with_search(
            flags_strategy(strategy, False, None, **flags), search, user_strategy=user_strategy, **search_flags
        )
    extra = plugin_option_processors()  # the plugins' options (--json-schema, …), checked before loading too
    loaded = load(model)
    if model_defaults:
        chosen = with_search(flags_strategy(strategy, True, loaded, **flags), search, **search_flags)
    if extra:
        chosen = Strategy.model_validate({**chosen.model_dump(exclude_none=True), "processors": [*chosen.processors, *extra]})
    options = dict(
        strategy=chosen, model=loaded, max_new_tokens=max_new_tokens, seed=seed, stop=stop, chat=chat, logprobs=logprobs
    )
    if stream is None:
        stream = len(prompts) == 1 and not as_json and chosen.build_search().streams
    if as_json:
        results = decoders.generate(prompts, **options)
        emit_json(
            {
                "model": loaded.name,
                "strategy": chosen.model_dump(mode="json", exclude_none=True),
                "results": [r.model_dump(mode="json", exclude_none=True) for r in results],
            }
        )
        return
    if stream:
        results = stream_texts(prompts, decoders.stream(prompts, **options), chat)  # validated before printing
    else:
        results = decoders.generate(prompts, **options)
        print_texts(results, chat)
    reasons = ", ".join(sorted({r.finish_reason for r in results}))
    error_console.print(f"[dim]{loaded.name} · {chosen.describe()} · {reasons}{speculation_summary(results)}[/]", highlight=False)


def speculation_summary(results) -> str:
    """`` · accepted a of d drafted tokens (r %)`` for speculative decoding, else an empty string."""
    stats = [r.speculation for r in results if r.speculation is not None]
    if not stats:
        return ""
    drafted, accepted = sum(s.drafted for s in stats), sum(s.accepted for s in stats)
    rate = f" ({accepted / drafted:.0%})" if drafted else ""
    return f" · accepted {accepted} of {drafted} drafted tokens{rate}"


#: the line between two prompts' texts when standard output is not a terminal
ROW_SEPARATOR = "---"


def print_texts(results, chat: bool) -> None:
    """Each prompt's text: on a terminal with its prompt and any alternatives; piped, the generated text only."""
    if not console.is_terminal:
        sys.stdout.write(f"\n{ROW_SEPARATOR}\n".join(r.text for r in results) + "\n")
        return
    for index, result in enumerate(results):
        if index:
            console.print()
        console.print(f"[dim]{escape(result.prompt)}[/]" + ("\n" if chat else ""), end="", highlight=False)
        console.print(result.text, style="bold", highlight=False, markup=False)
        for rank, other in enumerate(result.alternatives[1:], 2):
            console.print(f"[dim]#{rank} (score {other.score:.3f}):[/] ", end="", highlight=False)
            console.print(other.text, highlight=False, markup=False)


def stream_texts(prompts: list[str], events, chat: bool):
    """Show text as it comes and return the results.

    One prompt: its text as it comes (after the dimmed prompt on a terminal). Several prompts: on a terminal,
    one live line per prompt; piped, the rows in order — the first as it comes, each next one from where it
    got to once the previous one has ended — separated by :data:`ROW_SEPARATOR` lines.
    """
    terminal = console.is_terminal
    if len(prompts) > 1 and terminal:
        return _stream_live(prompts, events)
    if terminal:
        console.print(f"[dim]{escape(prompts[0])}[/]" + ("\n" if chat else ""), end="", highlight=False)
    pending = [""] * len(prompts)
    current = 0
    for event in events:
        if event.results is not None:
            for row in range(current, len(prompts)):
                sys.stdout.write(("" if row == current else f"\n{ROW_SEPARATOR}\n") + pending[row])
            sys.stdout.write("\n")
            sys.stdout.flush()
            return event.results
        for row, text in enumerate(event.texts):
            pending[row] += text
        while True:
            sys.stdout.write(pending[current])
            pending[current] = ""
            if current + 1 < len(prompts) and event.finished[current]:
                current += 1
                sys.stdout.write(f"\n{ROW_SEPARATOR}\n")
                continue
            break
        sys.stdout.flush()
    raise AssertionError("the stream ended without its results")


def _stream_live(prompts: list[str], events):
    from rich.live import Live
    from rich.text import Text

    texts = [""] * len(prompts)

    def view(finished):
        table = Table.grid(padding=(0, 1))
        table.add_column(justify="right", style="dim")
        table.add_column()
        for row, (prompt, text) in enumerate(zip(prompts, texts)):
            line = Text(prompt, style="dim")
            line.append(text, style="bold" if finished[row] else "")
            table.add_row(f"{row + 1}.", line)
        return table

    with Live(view([False] * len(prompts)), console=console, auto_refresh=False) as live:
        for event in events:
            if event.results is not None:
                return event.results
            for row, text in enumerate(event.texts):
                texts[row] += text
            live.update(view(event.finished), refresh=True)
    raise AssertionError("the stream ended without its results")


def token_table(title: str, rows: list[tuple], columns: tuple[str, ...]) -> Table:
    """A titled table of tokens; the title is printed above it, unwrapped."""
    console.print(f"\n[bold]{title}[/]", highlight=False)
    table = Table()
    for column in columns:
        table.add_column(column, justify="right" if column in ("#", "id", "probability", "before", "after") else "left")
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    return table


#: what the byte-level BPE spellings of step 2 mean, for learners
SPELLING_NOTE = (
    "'token' is the tokenizer's own spelling: byte-level BPE writes every byte as one printable character, so "
    "'Ġ' is a space, 'Ċ' a newline, and a letter outside ASCII shows as two or three odd characters (its UTF-8 "
    "bytes, e.g. 'Ø§' for the Arabic ا). 'text' is what the token decodes to; a token holding part of a "
    "character decodes to '�' until the rest of its bytes come."
)


def speculation_table(speculation) -> Table:
    """Speculative decoding's steps: the drafted tokens (accepted ✓, rejected ✗), and the target's own token."""
    console.print(
        f"\n[bold]Speculative decoding[/]: {speculation.accepted} of {speculation.drafted} drafted tokens accepted in "
        f"{speculation.steps} verification passes [dim](after the first token, which the prompt's pass gives)[/]",
        highlight=False,
    )
    table = Table()
    for column in ("step", "at token", "drafted (✓ accepted, ✗ where the target disagreed)", "target's token"):
        table.add_column(column, justify="right" if column in ("step", "at token") else "left")
    for record in speculation.records or []:
        marks = [
            f"[green]✓[/]{escape(repr(text))}" if n < record.accepted else f"[red]✗[/]{escape(repr(text))}" if n == record.accepted
            else f"[dim]{escape(repr(text))}[/]"
            for n, text in enumerate(record.drafted_text)
        ]  # fmt: skip
        kind = "bonus" if record.accepted == len(record.drafted) and record.drafted else "own"
        drafted = " ".join(marks) if marks else "[dim](no draft)[/]"
        table.add_row(str(record.step), str(record.position + 1), drafted, f"{escape(repr(record.token_text))} [dim]{kind}[/]")
    return table


def candidates_json(candidates) -> list[dict]:
    return [{"token": c.token, "id": c.token_id, "probability": c.probability} for c in candidates]


@app.command()
def explain(
    prompt: Annotated[str, typer.Argument(help="The text to continue.", show_default=False, metavar="PROMPT")],
    model: ModelOption = None,
    top: Annotated[int, typer.Option(min=1, help="How many candidates to show.")] = 10,
    steps: Annotated[int, typer.Option(min=0, help="How many tokens to generate step by step.")] = 5,
    strategy: StrategyOption = None,
    temperature: Annotated[float, typer.Option(help="Temperature of the reshaping demo (and default strategy).")] = 0.7,
    top_k: Annotated[int, typer.Option(help="k of the reshaping demo (and default strategy).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for the sampled choices.")] = 0,
    plot: Annotated[str | None, typer.Option("--plot", help="Draw each stage's top candidates to this PNG file.")] = None,
    search: SearchOption = None,
    num_beams: NumBeamsOption = None,
    prompt_lookup_num_tokens: PromptLookupOption = None,
    assistant_model: AssistantModelOption = None,
    chat: ChatOption = False,
    as_json: JsonOption = False,
) -> None:
    """Walk through the whole pipeline for one prompt: tokens, ids, logits, candidates, choices, steps."""
    import torch

    import decoders
    from decoders.explain import walk_prompt
    from decoders.trace import top_candidates

    loaded = load(model)
    tokenizer = loaded.tokenizer
    reshape = Strategy.model_validate(
        {"processors": [{"kind": "temperature", "temperature": temperature}, {"kind": "top_k", "top_k": top_k}],
         "selector": {"kind": "sample"}}
    )  # fmt: skip
    chosen = with_search(
        Strategy.resolve(strategy) if strategy else reshape, search, user_strategy=strategy is not None,
        num_beams=num_beams, prompt_lookup_num_tokens=prompt_lookup_num_tokens, assistant_model=assistant_model,
    )  # fmt: skip
    walk = walk_prompt(prompt, loaded, chat=chat)
    next_logits = walk.logits[:, -1, :].float()
    generator = [torch.Generator().manual_seed(seed)]
    greedy_id = int(next_logits.argmax(dim=-1))
    sampled_id = int(chosen.build().select(walk.input_ids, next_logits, generator)[0])
    before = next_logits.softmax(dim=-1)[0]
    reshaped = reshape.build().process(walk.input_ids, next_logits).softmax(dim=-1)[0]
    reshaped_ids = torch.topk(reshaped, top_k).indices.tolist()
    result = decoders.generate(
        prompt, strategy=chosen, model=loaded, max_new_tokens=steps, seed=seed, chat=chat, trace=True, top=top
    )[0]  # fmt: skip
    top_next = top_candidates(next_logits, tokenizer, top)[0]
    decode = lambda i: tokenizer.decode([i])  # noqa: E731
    if as_json:
        emit_json(
            {
                "model": loaded.name,
                "prompt": prompt,
                "tokens": walk.tokens,
                "token_texts": [decode(i) for i in walk.input_ids[0].tolist()],
                "input_ids": walk.input_ids[0].tolist(),
                "input_shape": list(walk.input_ids.shape),
                "logits_shape": list(walk.logits.shape),
                "top": candidates_json(top_next),
                "greedy": {"token": decode(greedy_id), "id": greedy_id, "probability": float(before[greedy_id])},
                "sampled": {"token": decode(sampled_id), "id": sampled_id, "probability": float(before[sampled_id]),
                            "strategy": chosen.describe()},
                "reshaped": [{"token": decode(i), "id": i, "original": float(before[i]), "adjusted": float(reshaped[i])}
                             for i in reshaped_ids],
                "strategy": chosen.model_dump(mode="json", exclude_none=True),
                "steps": [
                    {"step": r.step, "stages": [{"stage": st.stage, "survivors": st.survivors, "entropy": st.entropy,
                                                 "top": candidates_json(st.top)} for st in r.stages],
                     "candidates": candidates_json(r.stages[-1].top),
                     "chosen": {"token": r.chosen.token, "id": r.chosen.token_id, "probability": r.chosen.probability}}
                    for r in result.steps or []
                ],
                "beam_steps": [r.model_dump(mode="json") for r in result.beam_steps or []],
                "speculation": None if result.speculation is None else result.speculation.model_dump(mode="json"),
                "text": result.text,
            }
        )  # fmt: skip
    else:
        show = console.print
        show(f"[bold]1. Input text[/]\n  {walk.text!r}", highlight=False)
        show(token_table(f"2. Tokenization: {len(walk.tokens)} tokens, as the tokenizer spells them → 3. their ids",
                         [(n, repr(t), repr(decode(i)), i)
                          for n, (t, i) in enumerate(zip(walk.tokens, walk.input_ids[0].tolist()), 1)],
                         ("#", "token", "text", "id")))  # fmt: skip
        show(f"[dim]{SPELLING_NOTE}[/]", highlight=False)
        show(f"\n[bold]4. Model[/]: input ids {list(walk.input_ids.shape)} (batch, tokens) → logits "
             f"{list(walk.logits.shape)} (batch, tokens, vocabulary): one score per vocabulary token at every position;"
             " the last position predicts the next token.\n", highlight=False)  # fmt: skip
        show(token_table(f"5. Top {top} next tokens (softmax of the last position)",
                         [(n, repr(c.token), c.token_id, percent(c.probability)) for n, c in enumerate(top_next, 1)],
                         ("#", "token", "id", "probability")))  # fmt: skip
        show(f"\n[bold]6. Choosing[/]: greedy picks {decode(greedy_id)!r} (always the most likely); "
             f"{chosen.describe()} with seed {seed} drew {decode(sampled_id)!r}.\n", highlight=False)  # fmt: skip
        show(token_table(f"7. Temperature {temperature} then top-k {top_k}, re-normalised",
                         [(repr(decode(i)), i, percent(float(before[i])), percent(float(reshaped[i]))) for i in reshaped_ids],
                         ("token", "id", "before", "after")))  # fmt: skip
        show(f"\n[bold]8. Step by step[/] with {chosen.describe()} (seed {seed})", highlight=False)
        for record in result.beam_steps or []:
            show(f"\n[bold]step {record.step + 1}[/] [dim]running beams, cumulative log-probability[/]", highlight=False)
            for n, beam in enumerate(record.beams, 1):
                show(f"  {n:2}. {beam.score:9.3f}  {walk.text + beam.text!r}", highlight=False)
            for beam in record.finished:
                show(f"  [green]done[/] {beam.score:9.3f}  {walk.text + beam.text!r} [dim](score / length^penalty)[/]", highlight=False)
        if result.beam_steps:
            show(f"\n[bold]result[/] {walk.text + result.text!r} (score {result.score:.3f})", highlight=False)
        if result.speculation is not None:
            show(speculation_table(result.speculation))
        text_so_far = walk.text
        for record in result.steps or []:
            stages = " → ".join(f"{st.stage}: {st.survivors} tokens, H {st.entropy:.2f}" for st in record.stages)
            show(f"\n[bold]step {record.step + 1}[/] [dim]{stages}[/]", highlight=False)
            for n, c in enumerate(record.stages[-1].top, 1):
                mark = "[green]✓[/]" if c.token_id == record.chosen.token_id else " "
                show(f"  {mark} {n:2}. {c.token!r:<20} {percent(c.probability)}", highlight=False)
            text_so_far += record.chosen.token
            show(f"  [dim]text so far:[/] {text_so_far!r}", highlight=False)
    if plot:
        from decoders.plotting import plot_stages

        if result.beam_steps:
            raise StrategyError(
                f"--plot draws each stage of one chosen token; the '{chosen.search.kind}' search keeps several "
                "hypotheses (shown above): plot without --search"
            )
        written = plot_stages(result.steps or [], plot, title=f"{loaded.name}: {chosen.describe()}")
        error_console.print(f"wrote {written} ({len(result.steps or [])} steps, one row each)")


@app.command()
def compare(
    prompt: Annotated[str, typer.Argument(help="The text to continue.", show_default=False, metavar="PROMPT")],
    model: ModelOption = None,
    strategies: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy", "-s",
            help="A preset, strategy file or strategy as JSON text to compare (repeatable; default: the tutorial's six "
            "and beam search).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the sampling presets.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per continuation.")] = 20,
    chat: ChatOption = False,
    as_json: JsonOption = False,
) -> None:
    """One continuation per strategy, side by side (default: greedy, low/high temperature, top-k, top-p, balanced,
    beam search). Strategies that share a search run as one mixed batch."""
    import decoders
    from decoders.strategy import COMPARE_PRESETS

    chosen = {}  # all checked before loading; a strategy given as JSON text is named by its name or its place
    for index, spec in enumerate(strategies or COMPARE_PRESETS):
        strategy = Strategy.resolve(spec)
        chosen[(strategy.name or f"strategy {index + 1}") if is_json_text(spec) else spec] = strategy
    loaded = load(model)
    by_search: dict[str, list[str]] = {}  # one mixed call per search: the strategies share its forward passes
    for name, strategy in chosen.items():
        by_search.setdefault(strategy.search.model_dump_json(), []).append(name)
    results = {}
    for names in by_search.values():
        batch = decoders.generate(
            [prompt] * len(names), strategy=[chosen[name] for name in names], model=loaded,
            max_new_tokens=max_new_tokens, seed=[seed] * len(names), chat=chat,
        )  # fmt: skip
        results.update(zip(names, batch))
    rows = []
    for name, strategy in chosen.items():
        result = results[name]
        rows.append({"strategy": name, "description": strategy.description, "chain": strategy.describe(),
                     "text": result.text, "generated_ids": result.generated_ids})  # fmt: skip
    if as_json:
        emit_json({"model": loaded.name, "prompt": prompt, "seed": seed, "results": rows})
        return
    table = Table(title=f"{prompt!r} → ({loaded.name}, seed {seed}, newlines shown as \\n)", title_justify="left")
    table.add_column("strategy", style="bold")
    table.add_column("chain", style="dim")
    table.add_column("continuation")
    for row in rows:
        table.add_row(row["strategy"], row["chain"], visible(row["text"]))
    console.print(table)


@app.command()
def plugins(as_json: JsonOption = False) -> None:
    """List every processor, selector and search kind and every preset, with the plugin that provides it."""
    registry = get_registry()
    rows = [
        {"kind": r.kind, "role": r.role, "plugin": r.plugin, "description": r.config.describe()}
        for table in (registry.processors, registry.selectors, registry.searches)
        for r in table.values()
    ]
    rows += [
        {"kind": p.name, "role": "preset", "plugin": p.plugin, "description": p.strategy.get("description") or ""}
        for p in registry.presets.values()
    ]
    loaded = [{"name": p.name, "distribution": p.distribution, "version": p.version} for p in registry.plugins]
    if as_json:
        emit_json({"kinds": rows, "plugins": loaded, "problems": registry.problems})
        return
    table = Table(title="decoders kinds and presets", title_justify="left")
    for column in ("kind", "role", "plugin", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["kind"], row["role"], row["plugin"], row["description"])
    console.print(table)
    installed = Table(title="plugins", title_justify="left")
    for column in ("plugin", "distribution", "version"):
        installed.add_column(column)
    for plugin in loaded:
        installed.add_row(plugin["name"], plugin["distribution"] or "(registered in code)", plugin["version"] or "")
    console.print(installed)


@app.command()
def schema(
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write the schema to this file.")] = None,
) -> None:
    """Print the JSON Schema of strategy files (every registered kind, plugins included)."""
    text = json.dumps(Strategy.json_schema(), indent=2) + "\n"
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
        error_console.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


@app.command()
def cache(
    clear: Annotated[
        bool, typer.Option("--clear", help="Delete the cached models (the next load converts them again).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Show the on-disk model cache (its root, each folder, what it holds, its size), or delete it with --clear."""
    from decoders.models import cache_entries, cache_root, clear_cache

    def size(count: int) -> str:
        return f"{count / 1e6:.1f} MB" if count >= 1e5 else f"{count / 1e3:.1f} kB"

    root, entries = cache_root(), cache_entries()
    rows = [
        {"path": str(e.path), "name": e.path.name, "model": e.model, "source": e.source, "size": e.size,
         "status": e.status}
        for e in entries
    ]  # fmt: skip
    if clear:
        removed = {str(path) for path in clear_cache()}
        rows = [row for row in rows if row["path"] in removed]
        if as_json:
            emit_json({"root": str(root), "removed": rows, "freed": sum(row["size"] for row in rows)})
            return
        for row in rows:
            console.print(f"removed {escape(row['path'])} ({size(row['size'])})", highlight=False, soft_wrap=True)
        console.print(f"removed {len(rows)} cache folder{'s' * (len(rows) != 1)} from {escape(str(root))}, "
                      f"{size(sum(row['size'] for row in rows))} freed", highlight=False, soft_wrap=True)  # fmt: skip
        return
    if as_json:
        emit_json({"root": str(root), "entries": rows, "size": sum(row["size"] for row in rows)})
        return
    if not rows:
        console.print(f"no cached models in {escape(str(root))}", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"model cache in {escape(str(root))}", title_justify="left")
    table.add_column("folder", no_wrap=True, overflow="fold")
    table.add_column("model", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for row in rows:
        table.add_row(escape(row["name"]), escape(row["model"]), size(row["size"]), row["status"])
    console.print(table)
    total = size(sum(row["size"] for row in rows))
    error_console.print(f"[dim]{total} in all; delete with `decoders cache --clear`[/]", highlight=False)


#: the plugin options given to the running ``generate``: (option, value) pairs (see :func:`command`)
_plugin_values: list[tuple[Any, str]] = []


def command(registry) -> tuple[Any, list[str]]:
    """The CLI as a click group whose ``generate`` also has each plugin's options (hook
    ``decoders_register_generate_options``), and the problems met (an option ``generate`` already has is skipped)."""
    signature = inspect.signature(generate, eval_str=True)
    taken = {name for name in signature.parameters}
    for parameter in signature.parameters.values():
        for info in getattr(parameter.annotation, "__metadata__", ()):
            taken.update(getattr(info, "param_decls", None) or ())
    options, problems = [], []
    for entry in registry.generate_options:
        name = entry.flag.removeprefix("--").replace("-", "_")
        if entry.flag in taken or name in taken:
            problems.append(f"plugin '{entry.plugin}' adds {entry.flag} to generate, which already has it; it is skipped")
            continue
        taken |= {entry.flag, name}
        options.append((name, entry))
    if not options:
        return typer.main.get_command(app), problems

    def generate_with_plugin_options(**values):
        given = [(entry, values.pop(name)) for name, entry in options]
        _plugin_values[:] = [(entry, value) for entry, value in given if value is not None]
        return generate(**values)

    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[str | None, typer.Option(entry.flag, help=entry.help, metavar=entry.metavar)])
        for name, entry in options
    ]  # fmt: skip
    generate_with_plugin_options.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])
    generate_with_plugin_options.__annotations__ = {p.name: p.annotation for p in [*signature.parameters.values(), *extra]}
    generate_with_plugin_options.__doc__, generate_with_plugin_options.__name__ = generate.__doc__, generate.__name__
    extended = copy.copy(app)
    extended.registered_commands = []
    for info in app.registered_commands:
        if info.callback is generate:
            info = copy.copy(info)
            info.callback = generate_with_plugin_options
        extended.registered_commands.append(info)
    return typer.main.get_command(extended), problems


def plugin_option_processors() -> list:
    """The processor configs the plugin options given to ``generate`` stand for, validated (errors name the flag)."""
    given, _plugin_values[:] = list(_plugin_values), []
    registry, configs = get_registry(), []
    for entry, value in given:
        try:
            configs += registry.processor_list_adapter.validate_python(entry.processors(value))
        except ValidationError as exc:
            messages = [error["msg"].removeprefix("Value error, ") for error in exc.errors()]
            raise StrategyError(f"{entry.flag}: {'; '.join(messages)}") from None
        except ValueError as exc:
            raise StrategyError(f"{entry.flag}: {exc}") from None
    return configs


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``decoders`` console script: clear one-line errors for expected failures.

    Plugin problems (a plugin that failed to load, or clashed) are printed once, as a warning line each.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    import warnings

    from decoders.plugins import PluginWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        registry = get_registry()
    group, problems = command(registry)
    for problem in [*registry.problems, *problems]:
        error_console.print(f"[yellow]warning:[/] {escape(problem)}", highlight=False)
    try:
        group(args=argv, prog_name="decoders")
    except (DecodersError, ValidationError) as exc:
        if isinstance(exc, ValidationError):
            label, message = "invalid strategy", validation_message(exc)
        else:
            label, message = "error", str(exc)
        error_console.print(f"[bold red]{label}:[/] {escape(message)}", highlight=False)
        raise SystemExit(2) from None
