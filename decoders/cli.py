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
from rich.text import Text

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
    context_settings={"max_content_width": 120},  # as wide as the terminal, up to 120 columns
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


def emit_json_line(data: object) -> None:
    """Print ``data`` as one line of JSON (a JSON Lines record) and flush it."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    """A one-line note on standard error: what the CLI did with an option beyond what the option says."""
    error_console.print(f"[yellow]note:[/] {escape(message)}", highlight=False)


def print_table(table: Table) -> None:
    """Print a table: drawn to fit a terminal; piped, as a markdown table (its title on the line above) whose
    cells are never wrapped or cut."""
    if console.is_terminal:
        console.print(table)
        return

    def plain(cell: object) -> str:
        return (Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)).replace("|", "\\|")

    columns = table.columns
    lines = [plain(table.title)] if table.title else []
    lines.append("| " + " | ".join(plain(column.header) for column in columns) + " |")
    lines.append("|" + "|".join("---:" if column.justify == "right" else "---" for column in columns) + "|")
    lines += ["| " + " | ".join(map(plain, row)) + " |" for row in zip(*(column.cells for column in columns))]
    sys.stdout.write("\n".join(lines) + "\n")


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


#: how :func:`visible` writes a backslash and the commonest whitespace
ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def visible(text: str) -> str:
    """Text on one line, whitespace the model generated made visible: a backslash doubled, a newline, a tab and
    every other non-printable character written as its Python escape (``\\n``, ``\\t``, ``\\x0c``, ``\\u2028``)."""
    return "".join(ESCAPES.get(ch) or (ch if ch.isprintable() else ascii(ch)[1:-1]) for ch in text)


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
    its own score) the greedy one. A strategy changed here loses its name and description (they described the
    original); replacing a strategy's own search is said on stderr.
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
    check_search_flags(search, given)
    if "early_stopping" in given:
        value = str(given["early_stopping"]).strip().lower()
        if value not in ("true", "false", "never"):
            raise StrategyError(f"--early-stopping must be true, false or never, got {given['early_stopping']!r}")
        given["early_stopping"] = {"true": True, "false": False}.get(value, value)
    if user_strategy and chosen.search.kind not in ("single", search):
        named = f"'{chosen.name}'" if chosen.name else "the strategy"
        note(f"--search {search} replaces the '{chosen.search.kind}' search of {named}")
    current = chosen.search.model_dump() if chosen.search.kind == search else {}
    result = Strategy.model_validate({**chosen.model_dump(exclude_none=True), "search": {**current, **given, "kind": search}})
    if "diversity_penalty" in given and getattr(result.search, "num_beam_groups", None) == 1:
        raise StrategyError(
            "--diversity-penalty acts between groups of beams, and there is one group: add --num-beam-groups "
            "(2 or more, dividing --num-beams)"
        )
    if not user_strategy:
        if result.build_search().samples:
            result = result.model_copy(update={"selector": SampleConfig()})
        else:
            try:
                result.build()
            except StrategyError:
                result = result.model_copy(update={"selector": GreedyConfig()})
    unchanged = result.model_dump(exclude={"name", "description"}) == chosen.model_dump(exclude={"name", "description"})
    return result if unchanged else result.model_copy(update={"name": None, "description": None})


def check_search_flags(search: str, given: dict[str, object]) -> None:
    """Refuse search flags the search has no setting for, in the CLI's words (a kind no plugin registers is left to
    the strategy's own validation, which lists the kinds)."""
    registered = get_registry().searches.get(search)
    if registered is None:
        return
    fields = registered.config.model_fields
    foreign = [_flag(name) for name in given if name not in fields]
    if foreign:
        takes = [_flag(name) for name in FLAG_SEARCH if name in fields]
        offer = f"it takes {', '.join(takes)}" if takes else "it takes no search flags (set it in a strategy file)"
        refused = " and ".join(foreign)
        verb = "does" if len(foreign) == 1 else "do"
        raise StrategyError(f"{refused} {verb} not apply to the '{search}' search: {offer}")


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
    """The strategy named by --strategy, --model-defaults, or the parameter flags (the caller allows one of the three).

    Each flag becomes one processor, checked on its own, so a bad value is reported with the flag's name.
    """
    given = {name: value for name, value in flags.items() if value is not None}
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


StrategiesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--strategy", "-s",
        help=f"A preset ({', '.join(PRESETS)}, or a plugin's), a .json/.toml strategy file, or a strategy as JSON text; "
        "one per prompt (in order) for a mixed batch.",
    ),
]  # fmt: skip


@app.command()
def generate(
    prompts: Annotated[
        list[str] | None,
        typer.Argument(help="One or more prompts (a batch); none: one read from standard input.", show_default=False, metavar="PROMPT"),
    ] = None,
    model: ModelOption = None,
    strategy: StrategiesOption = None,
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
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream", help="Print tokens as they come (default: on for one prompt; with --json: JSON Lines)."
        ),
    ] = None,
    search: SearchOption = None,
    num_beams: NumBeamsOption = None,
    length_penalty: LengthPenaltyOption = None,
    early_stopping: EarlyStoppingOption = None,
    num_return_sequences: ReturnSequencesOption = None,
    num_beam_groups: Annotated[
        int | None, typer.Option("--num-beam-groups", help="Diverse beam search: groups of beams (divides --num-beams).")
    ] = None,
    diversity_penalty: Annotated[
        float | None,
        typer.Option(
            "--diversity-penalty", help="Diverse beam search: penalty per earlier group's choice (with --num-beam-groups)."
        ),
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
        int | None,
        typer.Option(
            "--logprobs",
            help="Per-token log-probabilities with this many alternatives: a table per prompt on a terminal, in the "
            "results with --json.",
        ),
    ] = None,
    chat: ChatOption = False,
    as_json: JsonOption = False,
) -> None:
    """Generate a continuation of each prompt with a decoding strategy.

    Several -s with as many prompts make a mixed batch: prompt i runs with strategy i.

    Output on a terminal: each prompt (dimmed), its text, and its other hypotheses with their scores. Piped (no
    --json): one prompt with one hypothesis prints just its text; otherwise one line per hypothesis, prompts counted
    from 0, with a backslash doubled and newlines, tabs and other non-printable characters written as Python
    escapes (\\n, \\t, \\x0c):

    \b
      [0] the text of prompt 0 (its best hypothesis)
      [0.1] its next hypothesis (--num-return-sequences)
      [1] the text of prompt 1

    The model, strategy and finish reasons go to stderr.

    --json prints one document {"model", "strategy", "results"} ("strategy" is a list, one per prompt, for a mixed
    batch); with --stream, JSON Lines: one {"step", "token_ids", "texts", "finished"} per step, then that document
    on one line.
    """
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
    processor_flags = any(value is not None for value in flags.values())
    if sum([bool(strategy), model_defaults, processor_flags]) > 1:
        raise StrategyError("use one of --strategy, --model-defaults, or parameter flags such as --temperature, not several")
    specs = strategy or [None]
    if len(specs) > 1 and len(specs) != len(prompts):
        raise StrategyError(
            f"{len(specs)} strategies (-s) for {len(prompts)} prompt{'s' * (len(prompts) != 1)}: give one -s for all "
            "the prompts, or one per prompt, in order"
            + (" (to run several strategies on one prompt: decoders compare)" if len(prompts) == 1 else "")
        )
    extra = plugin_option_processors()  # the plugins' options (--json-schema, …), checked before loading too
    loaded = load(model) if model_defaults else None  # its generation_config is the strategy
    chosen = [
        with_search(
            flags_strategy(spec, model_defaults, loaded, **flags), search,
            user_strategy=bool(strategy or model_defaults or processor_flags), **search_flags,
        )
        for spec in specs
    ]  # fmt: skip
    if extra:
        chosen = [
            Strategy.model_validate({**c.model_dump(exclude_none=True), "processors": [*c.processors, *extra]}) for c in chosen
        ]
    rows = chosen * len(prompts) if len(chosen) == 1 else chosen
    if stream is None:
        stream = len(prompts) == 1 and not as_json and rows[0].build_search().streams
    check_generation(prompts, rows, seed=seed, stream=stream, max_new_tokens=max_new_tokens, stop=stop, logprobs=logprobs)
    if loaded is None:
        loaded = load(model)
    options = {"model": loaded, "max_new_tokens": max_new_tokens, "stop": stop, "chat": chat, "logprobs": logprobs}

    def document(results) -> dict:
        strategies = [c.model_dump(mode="json", exclude_none=True) for c in chosen]
        return {"model": loaded.name, "strategy": strategies if len(chosen) > 1 else strategies[0],
                "results": [r.model_dump(mode="json", exclude_none=True) for r in results]}  # fmt: skip

    if stream:
        events = decoders.stream(prompts, rows if len(chosen) > 1 else chosen[0], seed=seed, **options)
        if as_json:
            for event in events:
                if event.results is None:
                    emit_json_line({"step": event.step, "token_ids": event.token_ids, "texts": event.texts,
                                    "finished": event.finished})  # fmt: skip
                else:
                    emit_json_line(document(event.results))
            return
        results = stream_texts(prompts, events, chat)  # validated before printing
    else:
        seeds = None if seed is None else [seed + row for row in range(len(prompts))]
        results = generate_batches(prompts, rows, seeds, **options)
        if as_json:
            emit_json(document(results))
            return
        print_texts(results, chat)
    if logprobs is not None:
        print_logprobs(results)
    reasons = ", ".join(sorted({r.finish_reason for r in results}))
    described = " | ".join(dict.fromkeys(c.describe() for c in chosen))
    error_console.print(
        f"[dim]{escape(loaded.name)} · {escape(described)} · {reasons}{speculation_summary(results)}[/]", highlight=False
    )


def batch_key(strategy: Strategy) -> str:
    """Strategies with the same key can share one mixed batch: the same search and settings, and the same selector
    unless the search lets each row's chain choose (see :attr:`decoders.searches.Search.per_row_chains`)."""
    shared_selector = not strategy.build_search().per_row_chains
    return strategy.search.model_dump_json() + (strategy.selector.model_dump_json() if shared_selector else "")


def check_generation(
    prompts: list[str], strategies: list[Strategy], *, seed: int | None, stream: bool, max_new_tokens: int,
    stop: list[str] | None, logprobs: int | None,
) -> None:  # fmt: skip
    """What ``generate`` can check without the model, checked before it loads: the prompts, the options, the seed,
    and each strategy's chain against its search (and against streaming)."""
    from decoders import driver

    driver.as_prompts(prompts)
    options = driver.check_options(
        max_new_tokens=max_new_tokens, stop=stop, ignore_eos=False, logprobs=logprobs, trace=False, top=10, texts=stream
    )
    for strategy in {s.model_dump_json(): s for s in strategies}.values():
        search = strategy.build_search()
        if stream and not search.streams:
            raise GenerationError(
                f"--stream: the '{strategy.search.kind}' search cannot stream, its hypotheses are decided only at the "
                "end: leave out --stream"
            )
        if stop and not search.stop_strings:
            raise GenerationError(
                f"--stop: the '{strategy.search.kind}' search does not take stop strings: leave out --stop"
            )
        driver.checked_search(strategy, options)
    if stream and len({batch_key(s) for s in strategies}) > 1:
        raise StrategyError(
            "--stream runs the prompts as one batch, and these strategies cannot share one (different searches, or "
            "selectors their search cannot mix): leave out --stream"
        )
    if seed is not None:
        driver.as_seed(seed, "--seed")
        if seed + len(prompts) - 1 > driver.SEED_RANGE[1]:
            raise GenerationError(
                f"--seed {seed}: prompt i uses seed + i, and seed + {len(prompts) - 1} is past 2**64 - 1: use a smaller seed"
            )


def generate_batches(prompts: list[str], strategies: list[Strategy], seeds: list[int] | None, **options) -> list:
    """Each prompt with its strategy (and seed), as few ``decoders.generate`` calls as can share a batch (one per
    :func:`batch_key`); the results in the prompts' order."""
    import decoders

    batches: dict[str, list[int]] = {}
    for row, strategy in enumerate(strategies):
        batches.setdefault(batch_key(strategy), []).append(row)
    results = [None] * len(prompts)
    for rows in batches.values():
        batch = decoders.generate(
            [prompts[row] for row in rows], [strategies[row] for row in rows],
            seed=None if seeds is None else [seeds[row] for row in rows], **options,
        )  # fmt: skip
        for row, result in zip(rows, batch):
            results[row] = result
    return results


def speculation_summary(results) -> str:
    """`` · accepted a of d drafted tokens (r %)`` for speculative decoding, else an empty string."""
    stats = [r.speculation for r in results if r.speculation is not None]
    if not stats:
        return ""
    drafted, accepted = sum(s.drafted for s in stats), sum(s.accepted for s in stats)
    rate = f" ({accepted / drafted:.0%})" if drafted else ""
    return f" · accepted {accepted} of {drafted} drafted tokens{rate}"


def label(prompt: int, rank: int = 0) -> str:
    """The label of a prompt's hypothesis in the output: ``[i]`` for its best, ``[i.j]`` for its j-th other one."""
    return f"[{prompt}]" if rank == 0 else f"[{prompt}.{rank}]"


def print_texts(results, chat: bool) -> None:
    """Each prompt's text: on a terminal with its prompt and its other hypotheses; piped, in the layout the help of
    ``generate`` describes (one labelled line per hypothesis, unless there is only one)."""
    if not console.is_terminal:
        if len(results) == 1 and len(results[0].alternatives) <= 1:
            sys.stdout.write(results[0].text + "\n")
            return
        sys.stdout.writelines(
            f"{label(prompt, rank)} {visible(hypothesis.text)}\n"
            for prompt, result in enumerate(results)
            for rank, hypothesis in enumerate(result.alternatives)
        )
        return
    for index, result in enumerate(results):
        if index:
            console.print()
        console.print(f"[dim]{escape(result.prompt)}[/]" + ("\n" if chat else ""), end="", highlight=False)
        console.print(result.text, style="bold", highlight=False, markup=False)
        for rank, other in enumerate(result.alternatives[1:], 2):
            weight = "" if other.weight is None else f", weight {other.weight:.3g}"
            console.print(f"[dim]#{rank} (score {other.score:.3f}{weight}):[/] ", end="", highlight=False)
            console.print(other.text, highlight=False, markup=False)


def print_logprobs(results) -> None:
    """Each prompt's per-token log-probabilities (of its best hypothesis) as a table on a terminal; piped, where
    they are instead (the piped layout holds texts only)."""
    if not console.is_terminal:
        note("--logprobs: the log-probabilities are in the --json output; piped text holds the texts only")
        return
    for prompt, result in enumerate(results):
        table = Table(title=f"log-probabilities of prompt {prompt}'s text", title_justify="left")
        for column in ("#", "token", "log-p", "after the chain", "the model's most likely (log-p)"):
            table.add_column(column, justify="right" if column in ("#", "log-p", "after the chain") else "left")
        for position, step in enumerate(result.logprobs or [], 1):
            chosen = step.chosen
            processed = "removed" if chosen.processed is None else f"{chosen.processed:.3f}"
            top = ", ".join(f"{escape(repr(t.token))} {t.raw:.2f}" for t in step.top)
            table.add_row(str(position), escape(repr(chosen.token)), f"{chosen.raw:.3f}", processed, top)
        print_table(table)


def stream_texts(prompts: list[str], events, chat: bool):
    """Show text as it comes and return the results.

    One prompt: its text as it comes (after the dimmed prompt on a terminal). Several prompts: on a terminal,
    one live line per prompt; piped, the labelled lines of the piped layout (``[i] text``, whitespace escaped) in
    order, the first as it comes, each next one from where it got to once the previous one has ended.
    """
    terminal = console.is_terminal
    if len(prompts) > 1 and terminal:
        return _stream_live(prompts, events)
    if terminal:
        console.print(f"[dim]{escape(prompts[0])}[/]" + ("\n" if chat else ""), end="", highlight=False)
    labelled = len(prompts) > 1
    pending = [""] * len(prompts)
    current = 0
    sys.stdout.write(f"{label(0)} " if labelled else "")
    for event in events:
        if event.results is not None:
            for row in range(current, len(prompts)):
                sys.stdout.write(("" if row == current else f"\n{label(row)} ") + pending[row])
            sys.stdout.write("\n")
            sys.stdout.flush()
            return event.results
        for row, text in enumerate(event.texts):
            pending[row] += visible(text) if labelled else text
        while True:
            sys.stdout.write(pending[current])
            pending[current] = ""
            if current + 1 < len(prompts) and event.finished[current]:
                current += 1
                sys.stdout.write(f"\n{label(current)} ")
                continue
            break
        sys.stdout.flush()
    raise AssertionError("the stream ended without its results")


def _stream_live(prompts: list[str], events):
    from rich.live import Live

    texts = [""] * len(prompts)

    def view(finished):
        table = Table.grid(padding=(0, 1))
        table.add_column(justify="right", style="dim")
        table.add_column()
        for row, (prompt, text) in enumerate(zip(prompts, texts)):
            line = Text(prompt, style="dim")
            line.append(text, style="bold" if finished[row] else "")
            table.add_row(label(row), line)
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


def hypotheses_table(search: str, hypotheses) -> Table:
    """The hypotheses a search returned, in its order, with their scores (and estimator weights, when it gives any)."""
    weights = any(h.weight is not None for h in hypotheses)
    table = Table(title=f"the {len(hypotheses)} hypotheses of the '{search}' search, in its order", title_justify="left")
    for column in ("#", "score", *(["weight (p/q)"] if weights else []), "text"):
        table.add_column(column, justify="left" if column == "text" else "right")
    for rank, hypothesis in enumerate(hypotheses, 1):
        weight = [] if not weights else ["" if hypothesis.weight is None else f"{hypothesis.weight:.4g}"]
        table.add_row(str(rank), f"{hypothesis.score:.3f}", *weight, escape(repr(hypothesis.text)))
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
    from decoders import driver
    from decoders.explain import walk_prompt
    from decoders.trace import top_candidates

    driver.as_prompts(prompt)  # everything that needs no model is checked before it loads
    reshape = flags_strategy(None, False, None, temperature=temperature, top_k=top_k)
    chosen = with_search(
        Strategy.resolve(strategy) if strategy else reshape, search, user_strategy=strategy is not None,
        num_beams=num_beams, prompt_lookup_num_tokens=prompt_lookup_num_tokens, assistant_model=assistant_model,
    )  # fmt: skip
    chosen.build()
    loaded = load(model)
    tokenizer = loaded.tokenizer
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
                "alternatives": [h.model_dump(mode="json", exclude_none=True) for h in result.alternatives],
                "text": result.text,
                "score": result.score,
            }
        )  # fmt: skip
    else:
        show = console.print
        show(f"[bold]1. Input text[/]\n  {walk.text!r}", highlight=False)
        print_table(token_table(f"2. Tokenization: {len(walk.tokens)} tokens, as the tokenizer spells them → 3. their ids",
                         [(n, repr(t), repr(decode(i)), i)
                          for n, (t, i) in enumerate(zip(walk.tokens, walk.input_ids[0].tolist()), 1)],
                         ("#", "token", "text", "id")))  # fmt: skip
        show(f"[dim]{SPELLING_NOTE}[/]", highlight=False)
        show(f"\n[bold]4. Model[/]: input ids {list(walk.input_ids.shape)} (batch, tokens) → logits "
             f"{list(walk.logits.shape)} (batch, tokens, vocabulary): one score per vocabulary token at every position;"
             " the last position predicts the next token.\n", highlight=False)  # fmt: skip
        print_table(token_table(f"5. Top {top} next tokens (softmax of the last position)",
                         [(n, repr(c.token), c.token_id, percent(c.probability)) for n, c in enumerate(top_next, 1)],
                         ("#", "token", "id", "probability")))  # fmt: skip
        show(f"\n[bold]6. Choosing[/]: greedy picks {decode(greedy_id)!r} (always the most likely); "
             f"{chosen.describe()} with seed {seed} drew {decode(sampled_id)!r}.\n", highlight=False)  # fmt: skip
        print_table(token_table(f"7. Temperature {temperature} then top-k {top_k}, re-normalised",
                         [(repr(decode(i)), i, percent(float(before[i])), percent(float(reshaped[i]))) for i in reshaped_ids],
                         ("token", "id", "before", "after")))  # fmt: skip
        show(f"\n[bold]8. Step by step[/] with {chosen.describe()} (seed {seed})", highlight=False)
        for record in result.beam_steps or []:
            show(f"\n[bold]step {record.step + 1}[/] [dim]running beams, cumulative log-probability[/]", highlight=False)
            for n, beam in enumerate(record.beams, 1):
                show(f"  {n:2}. {beam.score:9.3f}  {walk.text + beam.text!r}", highlight=False)
            for beam in record.finished:
                show(f"  [green]done[/] {beam.score:9.3f}  {walk.text + beam.text!r} [dim](score / length^penalty)[/]", highlight=False)
        if result.speculation is not None:
            print_table(speculation_table(result.speculation))
        text_so_far = walk.text
        for record in result.steps or []:
            stages = " → ".join(f"{st.stage}: {st.survivors} tokens, H {st.entropy:.2f}" for st in record.stages)
            show(f"\n[bold]step {record.step + 1}[/] [dim]{stages}[/]", highlight=False)
            for n, c in enumerate(record.stages[-1].top, 1):
                mark = "[green]✓[/]" if c.token_id == record.chosen.token_id else " "
                show(f"  {mark} {n:2}. {c.token!r:<20} {percent(c.probability)}", highlight=False)
            text_so_far += record.chosen.token
            show(f"  [dim]text so far:[/] {text_so_far!r}", highlight=False)
        if steps and result.steps is None and result.beam_steps is None and result.speculation is None:
            show(f"[dim]the '{chosen.search.kind}' search records no steps: its sequences are decided at the end[/]",
                 highlight=False)  # fmt: skip
        if len(result.alternatives) > 1:
            print_table(hypotheses_table(chosen.search.kind, result.alternatives))
        show(f"\n[bold]result[/] {walk.text + result.text!r} (score {result.score:.3f})", highlight=False)
    if plot:
        from decoders.plotting import plot_stages

        if steps and result.steps is None:
            raise StrategyError(
                f"--plot draws each stage of one chosen token, which the '{chosen.search.kind}' search does not "
                "record (it keeps several hypotheses, shown above): plot without --search"
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
    from decoders.strategy import COMPARE_PRESETS

    chosen = {}  # all checked before loading; a strategy given as JSON text is named by its name or its place
    for index, spec in enumerate(strategies or COMPARE_PRESETS):
        strategy = Strategy.resolve(spec)
        chosen[(strategy.name or f"strategy {index + 1}") if is_json_text(spec) else spec] = strategy
    check_generation([prompt], list(chosen.values()), seed=seed, stream=False, max_new_tokens=max_new_tokens,
                     stop=None, logprobs=None)  # fmt: skip
    loaded = load(model)
    results = generate_batches(  # one mixed call per search: the strategies share its forward passes
        [prompt] * len(chosen), list(chosen.values()), [seed] * len(chosen), model=loaded, max_new_tokens=max_new_tokens,
        chat=chat,
    )  # fmt: skip
    rows = []
    for (name, strategy), result in zip(chosen.items(), results):
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
        table.add_row(escape(row["strategy"]), escape(row["chain"]), escape(visible(row["text"])))
    print_table(table)


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
        table.add_row(*(escape(row[column]) for column in ("kind", "role", "plugin", "description")))
    print_table(table)
    installed = Table(title="plugins", title_justify="left")
    for column in ("plugin", "distribution", "version"):
        installed.add_column(column)
    for plugin in loaded:
        distribution = plugin["distribution"] or "(registered in code)"
        installed.add_row(escape(plugin["name"]), escape(distribution), plugin["version"] or "")
    print_table(installed)


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
    print_table(table)
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


#: the exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it)
INTERRUPTED = 130


from decoders.serve.cli import serve as serve_command  # noqa: E402 - typer only; the server's libraries load when it runs

app.command(name="serve")(serve_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``decoders`` console script: clear one-line errors for expected failures.

    Plugin problems (a plugin that failed to load, or clashed) are printed once, as a warning line each. Ctrl-C
    exits with status 130 and one line (typer turns it into that status inside a command; before, it is caught here).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    try:
        run_command(argv)
    except SystemExit as exc:
        if exc.code != INTERRUPTED:
            raise
    except KeyboardInterrupt:
        pass
    else:
        return
    error_console.print("interrupted", highlight=False)
    raise SystemExit(INTERRUPTED)


def run_command(argv: list[str] | None) -> None:
    """Run the command line (see :func:`main`)."""
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
            kind, message = "invalid strategy", validation_message(exc)
        else:
            kind, message = "error", str(exc)
        error_console.print(f"[bold red]{kind}:[/] {escape(message)}", highlight=False)
        raise SystemExit(2) from None
