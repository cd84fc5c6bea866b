"""Quality sweeps of decoding strategies: models × strategies × prompts × seeds → generations → metrics.

Reproduces the kind of comparison in Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration",
Table 1 (perplexity, Self-BLEU-4, Zipf coefficient, repetition %), plus distinct-2, rep-4 and mean entropy
(see :mod:`decoders.metrics`). A TOML file says what to run (``benchmarks/quality.toml`` is the default).

The work is cut into units, one per (model, strategy, seed, batch of prompts) plus one per (model, batch) for
the human continuations. Each unit generates, scores its texts under the scoring model, and is written to
``<output>/<name>_units/`` as soon as it finishes; a unit whose file exists is skipped, so an interrupted run
resumes where it stopped (a unit's file name holds a hash of everything it depends on, so changing the config
reruns only what changed). Then the metrics are computed from the units and written as
``<output>/<name>.json``, ``.csv`` and ``.md``, with ``<name>_curves.png`` (metrics vs k, p and temperature)
and ``<name>_rank_frequency.png`` (token rank-frequency against the human text).

    python benchmarks/quality.py                                   # benchmarks/quality.toml, in this process
    python benchmarks/quality.py my_sweep.toml --executor ray      # the same units on a local Ray cluster
    python benchmarks/quality.py --executor ray --address ray://head:10001
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import platform
import re
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import decoders
from decoders import metrics

DEFAULT_CONFIG = Path(__file__).parent / "quality.toml"
HUMAN = "human"
METRICS = ("perplexity", "self_bleu4", "zipf", "repetition_pct", "distinct_2", "mean_entropy", "rep_4")
#: the strategies that can sit on a curve: sampling after at most one processor of these kinds
CURVE_KINDS = {"top_k": "top_k", "top_p": "top_p", "temperature": "temperature"}
INSTALL_RAY = "pip install 'decoders-lab[ray]'  (or: pip install 'ray>=2.9')"
INSTALL_PLOTS = "pip install 'decoders-lab[plots]'"


class ConfigError(ValueError):
    """A sweep config that cannot be used; the message names the offending key."""


class QualityConfig(BaseModel):
    """What a sweep runs. Paths are relative to the config file's folder.

    Args:
        name: stem of the output files (``<name>.json``, ``<name>.csv``, ``<name>.md``, ``<name>_*.png``).
        output: the folder for results and work units.
        prompts: a JSON Lines file with a ``prompt`` and a human ``continuation`` per line.
        max_prompts: use the first this many prompts (all when None).
        batch_size: prompts per work unit (one ``generate`` call).
        max_new_tokens: tokens per generation; human continuations are cut to as many tokens.
        ignore_eos: generate all ``max_new_tokens`` tokens even past an end-of-sequence token.
        seeds: one pass over the prompts per seed (prompt ``i`` uses seed ``seed · 1000003 + i``).
        models: what ``decoders.load_model`` accepts (``"default"``: the embedded SmolLM2-135M-Instruct).
        scoring_model: the model perplexity is measured under (None: each generating model scores its own
            texts, as in Holtzman et al.; otherwise the texts are re-tokenized for it).
        human: include the human continuations as a row.
        strategies: name → a preset name, an inline strategy table, or a ``.json``/``.toml`` strategy file.
        curve_metrics: the metrics plotted against k, p and temperature.
        rank_frequency_strategies: the strategies drawn on the rank-frequency plot (None: all).

    Example:
        >>> QualityConfig.model_validate({"strategies": {"greedy": "greedy"}}).max_new_tokens
        64
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "quality"
    output: Path = Path("results")
    prompts: Path = Path("data/britannica1911_shakespeare.jsonl")
    max_prompts: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=10, ge=1)
    max_new_tokens: int = Field(default=64, ge=1)
    ignore_eos: bool = True
    seeds: list[int] = Field(default=[0], min_length=1)
    models: list[str] = Field(default=["default"], min_length=1)
    scoring_model: str | None = None
    human: bool = True
    strategies: dict[str, str | dict[str, Any]] = Field(min_length=1)
    curve_metrics: list[Literal[METRICS]] = ["perplexity", "self_bleu4", "zipf", "repetition_pct"]  # type: ignore[valid-type]
    rank_frequency_strategies: list[str] | None = None

    @field_validator("strategies")
    @classmethod
    def _names_free(cls, strategies: dict[str, Any]) -> dict[str, Any]:
        if HUMAN in strategies:
            raise ValueError(f"'{HUMAN}' is the human continuations' row: give this strategy another name")
        return strategies


def load_config(path: str | Path) -> tuple[QualityConfig, dict[str, decoders.Strategy]]:
    """Read and validate a sweep config and its strategies; errors name the offending key.

    Args:
        path: a TOML file.

    Returns:
        the config (paths made absolute) and each strategy, validated by decoders (plugin kinds included).

    Example:
        >>> config, strategies = load_config("benchmarks/quality.toml")  # doctest: +SKIP
        >>> strategies["top_k_40"].describe()  # doctest: +SKIP
        'top_k(40) → sample'
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        config = QualityConfig.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path} is not a valid sweep config:\n{problems}") from exc
    base = path.parent.resolve()
    config = config.model_copy(update={"output": base / config.output, "prompts": base / config.prompts})
    strategies = {}
    for name, spec in config.strategies.items():
        if isinstance(spec, str) and spec.lower().endswith((".json", ".toml")):
            spec = base / spec
        try:
            strategies[name] = decoders.Strategy.resolve(spec).model_copy(update={"name": name})
        except (decoders.StrategyError, ValidationError) as exc:
            raise ConfigError(f"{path}: strategies.{name}: {exc}") from exc
    unknown = set(config.rank_frequency_strategies or []) - {HUMAN, *strategies}
    if unknown:
        raise ConfigError(f"{path}: rank_frequency_strategies: unknown strategies {sorted(unknown)}")
    if not config.prompts.is_file():
        raise ConfigError(f"{path}: prompts: no file {config.prompts}")
    return config, strategies


def read_prompts(config: QualityConfig) -> list[dict[str, str]]:
    """The prompts and human continuations the config uses, in order."""
    rows = [json.loads(line) for line in config.prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[: config.max_prompts]


# ---- work units ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One piece of work: a batch of prompts, for one model, one strategy (or the human row) and one seed.

    Args:
        model: the generating model's name.
        strategy: the strategy's name, or ``"human"``.
        seed: the seed (None for the human row).
        batch: the batch index; prompts ``batch · batch_size`` onwards.
        spec: the strategy as a dict (None for the human row).
        key: a hash of everything the result depends on, part of the unit's file name.
    """

    model: str
    strategy: str
    seed: int | None
    batch: int
    spec: dict[str, Any] | None
    key: str

    def path(self, folder: Path) -> Path:
        seed = "" if self.seed is None else f"seed{self.seed}-"
        return folder / _slug(self.model) / _slug(self.strategy) / f"{seed}batch{self.batch:03d}-{self.key}.json"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "_"


def _identity(strategy: decoders.Strategy) -> dict[str, Any]:
    """The strategy as data, as far as results depend on it: without its description, and without the default
    search (so that units from before searches existed keep their key)."""
    spec = strategy.model_dump(mode="json", exclude={"description"})
    if spec["search"] == decoders.SingleConfig().model_dump(mode="json"):
        del spec["search"]
    return spec


def plan_units(config: QualityConfig, strategies: dict[str, decoders.Strategy]) -> list[Unit]:
    """Every unit of the sweep, in the order they run: model, then strategy (human first), seed, batch."""
    prompts = read_prompts(config)
    batches = [prompts[i : i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
    settings = config.model_dump(mode="json", include={"max_new_tokens", "ignore_eos", "scoring_model"})
    units = []
    for model in config.models:
        rows = [(HUMAN, None, None)] if config.human else []
        rows += [(name, _identity(s), seed) for name, s in strategies.items() for seed in config.seeds]
        for name, spec, seed in rows:
            for index, batch in enumerate(batches):
                identity = json.dumps([model, spec, seed, batch, settings], sort_keys=True)
                key = hashlib.sha256(identity.encode()).hexdigest()[:10]
                units.append(Unit(model, name, seed, index, spec, key))
    return units


def _load(name: str | None) -> Any:
    return decoders.load_model(None if name in (None, "default") else name)


def run_unit(config: QualityConfig, unit: Unit) -> dict[str, Any]:
    """Generate (or take the human text of) one unit's prompts and score every continuation.

    Returns:
        the unit's record: for each prompt its index, text, continuation token ids, the sum and count of the
        continuation's NLL under the scoring model, and (generated rows) the mean entropy of its steps.

    Example:
        >>> record = run_unit(config, plan_units(config, strategies)[0])  # doctest: +SKIP
        >>> record["rows"][0].keys()  # doctest: +SKIP
        dict_keys(['prompt_index', 'text', 'token_ids', 'nll_sum', 'nll_count', 'mean_entropy'])
    """
    loaded = _load(unit.model)
    first = unit.batch * config.batch_size
    batch = read_prompts(config)[first : first + config.batch_size]
    prompts = [row["prompt"] for row in batch]
    if unit.spec is None:
        tokenizer = loaded.tokenizer
        prompt_ids = tokenizer(prompts)["input_ids"]
        token_ids = [
            ids[: config.max_new_tokens]
            for ids in tokenizer([row["continuation"] for row in batch], add_special_tokens=False)["input_ids"]
        ]
        texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        entropies = [None] * len(batch)
    else:
        results = decoders.generate(
            prompts, unit.spec, model=loaded, max_new_tokens=config.max_new_tokens,
            seed=[unit.seed * 1_000_003 + first + i for i in range(len(batch))], trace=True, top=1,
            ignore_eos=config.ignore_eos,
        )  # fmt: skip
        prompt_ids = [r.prompt_ids for r in results]
        token_ids = [r.generated_ids[:-1] if r.finish_reason == "eos" else r.generated_ids for r in results]
        texts = [r.text for r in results]
        entropies = [metrics.mean_entropy(r.steps) if r.steps is not None else None for r in results]  # None: beams
    if config.scoring_model is None:
        scorer, score_prompts, score_continuations = loaded, prompt_ids, token_ids
    else:
        scorer = _load(config.scoring_model)
        score_prompts = scorer.tokenizer(prompts)["input_ids"]
        score_continuations = scorer.tokenizer(texts, add_special_tokens=False)["input_ids"]
    nlls = metrics.continuation_nlls(scorer, score_prompts, score_continuations)
    rows = [
        {"prompt_index": first + i, "text": text, "token_ids": ids, "nll_sum": sum(nll), "nll_count": len(nll),
         "mean_entropy": entropy}
        for i, (text, ids, nll, entropy) in enumerate(zip(texts, token_ids, nlls, entropies))
    ]  # fmt: skip
    return {"unit": asdict(unit), "rows": rows}


def _local_runner(config: QualityConfig, units: list[Unit]) -> Iterator[tuple[Unit, dict]]:
    for unit in units:
        yield unit, run_unit(config, unit)


def _ray_runner(address: str | None) -> Callable[[QualityConfig, list[Unit]], Iterator[tuple[Unit, dict]]]:
    """A runner that sends each unit to a Ray task and yields the results as they finish."""
    try:
        import ray
    except ImportError as exc:
        raise SystemExit(f"--executor ray needs Ray, which could not be imported ({exc}): {INSTALL_RAY}") from None

    def run(config: QualityConfig, units: list[Unit]) -> Iterator[tuple[Unit, dict]]:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        # this file is not an installed module: send its functions by value, so workers need only decoders
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        remote = ray.remote(num_cpus=1)(run_unit)
        pending = {remote.remote(config, unit): unit for unit in units}
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(done), ray.get(done)

    return run


def run_units(
    config: QualityConfig,
    units: list[Unit],
    runner: Callable[[QualityConfig, list[Unit]], Iterator[tuple[Unit, dict]]] = _local_runner,
    console: Console | None = None,
) -> list[dict]:
    """Run the units that have no file yet (writing each file as it finishes) and return every unit's record.

    Args:
        config: the sweep config.
        units: from :func:`plan_units`.
        runner: runs units and yields ``(unit, record)`` as each finishes (local, or Ray's).
        console: where the progress bar goes.
    """
    folder = config.output / f"{config.name}_units"
    pending = [u for u in units if not u.path(folder).is_file()]
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console,
    )  # fmt: skip
    with progress:
        task = progress.add_task(f"work units ({len(units) - len(pending)} already done)", total=len(pending))
        for unit, record in runner(config, pending):
            path = unit.path(folder)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".tmp").write_text(json.dumps(record))
            path.with_suffix(".tmp").replace(path)
            progress.update(
                task, advance=1, description=f"{Path(unit.model).name} · {unit.strategy} · batch {unit.batch}"
            )
    return [json.loads(u.path(folder).read_text()) for u in units]


# ---- metrics, tables and plots ------------------------------------------------------------------------------


def summarize(config: QualityConfig, strategies: dict[str, decoders.Strategy], records: list[dict]) -> list[dict]:
    """One row of metrics per (model, strategy), human first, from the units' records.

    Perplexity pools the NLL of every token; Self-BLEU-4 is taken over each seed's generations and averaged
    over seeds; the other metrics pool all generations.
    """
    grouped: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        unit = record["unit"]
        grouped.setdefault((unit["model"], unit["strategy"]), []).append(record)
    summary = []
    for (model, name), group in grouped.items():
        rows = [row for record in group for row in record["rows"]]
        by_seed: dict[Any, list[str]] = {}
        for record in group:
            by_seed.setdefault(record["unit"]["seed"], []).extend(row["text"] for row in record["rows"])
        sequences = [row["token_ids"] for row in rows]
        steps = [(row["mean_entropy"], row["nll_count"]) for row in rows if row["mean_entropy"] is not None]
        summary.append({
            "strategy": name,
            "perplexity": math.exp(sum(r["nll_sum"] for r in rows) / sum(r["nll_count"] for r in rows)),
            "self_bleu4": float(np.mean([metrics.self_bleu(texts) for texts in by_seed.values()])),
            "zipf": metrics.zipf_coefficient(sequences),
            "repetition_pct": metrics.repetition_pct(sequences),
            "distinct_2": metrics.distinct_n(sequences, 2),
            "mean_entropy": float(np.average([e for e, _ in steps], weights=[n for _, n in steps])) if steps else None,
            "rep_4": metrics.rep_n(sequences, 4),
            "model": model,
            "description": "human continuation" if name == HUMAN else strategies[name].describe(),
            "generations": len(rows),
            "tokens": sum(len(s) for s in sequences),
        })  # fmt: skip
    return summary


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def markdown_table(summary: list[dict]) -> str:
    """The summary as a Markdown table (one row per model and strategy)."""
    several = len({row["model"] for row in summary}) > 1
    columns = (["model"] if several else []) + ["strategy", "description", *METRICS]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c in ("model", "strategy", "description") else "---:" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(_format(row[c]) for c in columns) + " |" for row in summary]
    return "\n".join(lines) + "\n"


def curve_points(strategies: dict[str, decoders.Strategy]) -> dict[str, list[tuple[float, str]]]:
    """For k, p and temperature: ``(value, strategy name)`` of every strategy that is one point of that curve.

    A point is sampling after a single ``top_k``, ``top_p`` or ``temperature`` processor; pure sampling is p = 1
    and T = 1, greedy is k = 1. Other searches (beams) are no point of these curves.
    """
    points: dict[str, list[tuple[float, str]]] = {kind: [] for kind in CURVE_KINDS}
    for name, strategy in strategies.items():
        kinds = [p.kind for p in strategy.processors]
        if strategy.search.kind != "single":
            continue
        if strategy.selector.kind == "greedy" and not kinds:
            points["top_k"].append((1, name))
        elif strategy.selector.kind == "sample" and not kinds:
            points["top_p"].append((1.0, name))
            points["temperature"].append((1.0, name))
        elif strategy.selector.kind == "sample" and len(kinds) == 1 and kinds[0] in CURVE_KINDS:
            points[kinds[0]].append((float(getattr(strategy.processors[0], CURVE_KINDS[kinds[0]])), name))
    return {kind: sorted(values) for kind, values in points.items() if len(values) >= 2}


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or an exit that names the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(
            f"the quality plots need matplotlib, which could not be imported ({exc}): {INSTALL_PLOTS}\n"
            "(the units and the .json/.csv/.md tables are already written: rerun after installing to draw the plots)"
        ) from None
    return plt


def plot_curves(
    summary: list[dict], strategies: dict[str, decoders.Strategy], config: QualityConfig, path: Path
) -> Path | None:
    """Each curve metric against k, p and temperature, with the human value as a dashed line."""
    plt = _pyplot()

    points = curve_points(strategies)
    if not points:
        return None
    values = {row["strategy"]: row for row in summary}
    labels = {"top_k": "top-k: k", "top_p": "top-p (nucleus): p", "temperature": "sampling: temperature"}
    metrics_shown = config.curve_metrics
    figure, axes = plt.subplots(
        len(metrics_shown), len(points), figsize=(4 * len(points), 2.6 * len(metrics_shown)), squeeze=False
    )
    for column, (kind, curve) in enumerate(points.items()):
        for row, metric in enumerate(metrics_shown):
            axis = axes[row][column]
            xs = [x for x, name in curve if values[name][metric] is not None]
            ys = [values[name][metric] for _, name in curve if values[name][metric] is not None]
            axis.plot(xs, ys, "o-", color="tab:blue")
            if HUMAN in values and values[HUMAN][metric] is not None:
                axis.axhline(values[HUMAN][metric], color="black", linestyle="--", linewidth=1, label="human")
            if kind == "top_k":
                axis.set_xscale("log")
            if metric == "perplexity":
                axis.set_yscale("log")
            axis.set_ylabel(metric)
            axis.grid(alpha=0.3)
            if row == len(metrics_shown) - 1:
                axis.set_xlabel(labels[kind])
    axes[0][0].legend(loc="best")
    figure.suptitle(f"{config.name}: metrics vs decoding parameter (dashed: human text)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_rank_frequency(records: list[dict], config: QualityConfig, path: Path) -> Path:
    """Token frequency against rank (log-log) for each strategy, the human text in black."""
    plt = _pyplot()

    sequences: dict[str, list[list[int]]] = {}
    for record in records:
        sequences.setdefault(record["unit"]["strategy"], []).extend(row["token_ids"] for row in record["rows"])
    wanted = config.rank_frequency_strategies or list(sequences)
    figure, axis = plt.subplots(figsize=(7, 5))
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    for index, name in enumerate(n for n in wanted if n in sequences and n != HUMAN):
        frequencies = metrics.rank_frequencies(sequences[name])
        axis.loglog(range(1, len(frequencies) + 1), frequencies, color=colours[index % 10], linewidth=1.2, label=name)
    if HUMAN in sequences:
        frequencies = metrics.rank_frequencies(sequences[HUMAN])
        axis.loglog(range(1, len(frequencies) + 1), frequencies, color="black", linewidth=2.2, label=HUMAN)
    axis.set_xlabel("token rank")
    axis.set_ylabel("frequency")
    axis.set_title(f"{config.name}: rank-frequency of generated tokens")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_results(
    config: QualityConfig,
    strategies: dict[str, decoders.Strategy],
    records: list[dict],
    runtime_s: float,
    executor: str,
) -> list[Path]:
    """Write ``<name>.json``, ``.csv``, ``.md`` and the plots; return their paths."""
    summary = summarize(config, strategies, records)
    out = config.output
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{config.name}.json", out / f"{config.name}.csv", out / f"{config.name}.md"]
    machine = {
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(), "system": platform.platform(),
    }  # fmt: skip
    settings = config.model_dump(mode="json", exclude={"output", "prompts", "strategies"})
    settings["prompts"] = config.prompts.name
    settings["prompt_count"] = len(read_prompts(config))
    settings["strategies"] = {name: s.model_dump(mode="json", exclude_none=True) for name, s in strategies.items()}
    payload = {"config": settings, "machine": machine, "executor": executor, "runtime_s": runtime_s, "results": summary}
    written[0].write_text(json.dumps(payload, indent=2) + "\n")
    with written[1].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    written[2].write_text(markdown_table(summary))
    for model in config.models:
        suffix = "" if len(config.models) == 1 else f"_{_slug(model)}"
        own = [r for r in records if r["unit"]["model"] == model]
        own_summary = [row for row in summary if row["model"] == model]
        curves = plot_curves(own_summary, strategies, config, out / f"{config.name}_curves{suffix}.png")
        written += [p for p in (curves,) if p is not None]
        written.append(plot_rank_frequency(own, config, out / f"{config.name}_rank_frequency{suffix}.png"))
    return written


def run_sweep(
    config_path: str | Path, executor: Literal["local", "ray"] = "local", address: str | None = None,
    console: Console | None = None,
) -> list[dict]:  # fmt: skip
    """Run a sweep end to end (resuming finished units) and write its results; return the summary rows.

    Args:
        config_path: the TOML config.
        executor: ``"local"`` (this process) or ``"ray"`` (one Ray task per unit).
        address: the Ray cluster to join (None: start a local one).
        console: where progress and the table go.

    Example:
        >>> rows = run_sweep("benchmarks/quality.toml")  # doctest: +SKIP
        >>> [row["strategy"] for row in rows][:2]  # doctest: +SKIP
        ['human', 'greedy']
    """
    console = console or Console()
    config, strategies = load_config(config_path)
    runner = _ray_runner(address) if executor == "ray" else _local_runner
    started = time.perf_counter()
    records = run_units(config, plan_units(config, strategies), runner, console)
    runtime = time.perf_counter() - started
    paths = write_results(config, strategies, records, runtime, executor)
    summary = json.loads(paths[0].read_text())["results"]
    table = Table(
        title=f"{config.name}: {summary[0]['generations']} prompts × {config.max_new_tokens} tokens, {runtime:.0f} s"
    )
    for column in ["strategy", *METRICS]:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in summary:
        table.add_row(*(_format(row[c]) for c in ["strategy", *METRICS]))
    console.print(table)
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", type=Path, default=DEFAULT_CONFIG, help="sweep config (TOML)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local", help="where the work units run")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    args = parser.parse_args()
    if args.address and args.executor != "ray":
        parser.error("--address goes with --executor ray")
    try:
        run_sweep(args.config, args.executor, args.address)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
