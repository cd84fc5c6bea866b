"""Quality sweeps of decoding strategies: models × strategies × prompts × seeds → generations → metrics.

Reproduces the kind of comparison in Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration",
Table 1 (perplexity, Self-BLEU-4, Zipf coefficient, repetition %), plus distinct-2 and mean entropy, and the
metrics of Su et al. 2022, "A Contrastive Framework for Neural Text Generation" (rep-2/3/4, diversity,
coherence), and MAUVE against the human continuations (Pillutla et al. 2021, "MAUVE: Measuring the Gap Between
Neural Text and Human Text using Divergence Frontiers"); see :mod:`decoders.metrics`. Every metric comes with a
95 % bootstrap interval over prompts (each drawn prompt with all its seeds), seeded so that the same units give
the same intervals. A TOML file says what to run (``benchmarks/quality.toml`` is the default).

The work is cut into units, one per (model, strategy, seed, batch of prompts) plus one per (model, batch) for
the human continuations; a strategy that cannot depend on the seed (greedy selection, no sampling search,
built-in processors only) has one unit per batch, not one per seed. Units run in calls: the units of one batch
whose strategies use the single search share one ``decoders.generate`` call (a mixed batch, one strategy and
seed per row; a row's tokens are the same as in a call of its own, up to the numerics of the batch size), and
the units of any other search share a call with the other seeds of their strategy. Each unit generates,
scores its texts under the scoring model, takes each text's MAUVE features (see :class:`MauveConfig`), and
is written to ``<output>/<name>_units/`` as soon as its call finishes; a unit whose file exists is skipped, so
an interrupted run resumes where it stopped (a unit's file name holds a hash of everything it depends on, so
changing the config reruns only what changed; the MAUVE features are no part of that hash: a unit whose
features are missing, or were taken by another featurizer, gets them anew without generating again). Then the
metrics are computed from the units and written as ``<output>/<name>.json``, ``.csv`` and ``.md``, with
``<name>_curves.png`` (metrics vs k, p and temperature, with the intervals as error bars) and
``<name>_rank_frequency.png`` (token rank-frequency against the human text).

``--compare A B`` compares two strategies of a finished sweep: per metric, the difference A − B on the same
prompts and seeds, with a paired bootstrap interval and whether it excludes zero. ``A@0`` takes only seed 0
of A, so ``--compare top_p_0.95@0 top_p_0.95@1`` compares a strategy with itself under other seeds.

    python benchmarks/quality.py                                   # benchmarks/quality.toml, in this process
    python benchmarks/quality.py my_sweep.toml --executor ray      # the same units on a local Ray cluster
    python benchmarks/quality.py --executor ray --address ray://head:10001
    python benchmarks/quality.py --compare greedy pure_sampling    # from the units of the finished sweep
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import json
import platform
import re
import sys
import time
import tomllib
from collections import Counter
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
METRICS = (
    "perplexity", "self_bleu4", "zipf", "repetition_pct", "distinct_2", "mean_entropy", "rep_2", "rep_3", "rep_4",
    "diversity", "coherence", "mauve",
)  # fmt: skip
#: the n-gram lengths of rep-n and diversity (Su et al. 2022)
REP_NS = (2, 3, 4)
#: part of every unit's identity: a new number when what a unit's record holds changes
RECORD_VERSION = 2
#: the strategies that can sit on a curve: sampling after at most one processor of these kinds
CURVE_KINDS = {"top_k": "top_k", "top_p": "top_p", "temperature": "temperature"}
INSTALL_RAY = "pip install 'decoders-lab[ray]'  (or: pip install 'ray>=2.9')"
INSTALL_PLOTS = "pip install 'decoders-lab[plots]'"


class ConfigError(ValueError):
    """A sweep config that cannot be used; the message names the offending key."""


class MauveConfig(BaseModel):
    """How the sweep measures MAUVE (the ``[mauve]`` table of the config); the defaults are ``mauve-text``'s.

    Each text (prompt + continuation: the human continuation, or a generation) becomes one feature vector from
    the final hidden states of ``featurizer``, the scoring model by default: a stand-in for the paper's GPT-2
    large, which cannot be downloaded here, so the values are not comparable with the paper's. The paper takes
    the state at the text's last token (``pooling = "last"``); the default here is their mean over the text's
    tokens (``"mean"``), which told degenerate text from human text far better with SmolLM2-135M as the
    featurizer: on 144 prompts of ``data/botchan_morri1919.jsonl`` (64 tokens, seed 0), greedy against pure
    sampling, MAUVE 0.59 against 0.92 with the mean (paired difference −0.33 [−0.51, −0.13]) but 0.79 against
    0.95 with the last token (−0.15 [−0.38, 0.08], no decision). A small model's last state mostly encodes what
    comes next, not the whole text; GPT-2 large's last state is the summary the paper relies on. Each strategy's
    texts (Q, all seeds) are compared with the human continuations of the same prompts (P) by
    :func:`metrics.mauve`, quantised once on all of them; the interval resamples prompts (each drawn prompt
    with its human text and every seed's text) over that quantisation. Needs ``human = true`` (without it no
    features are taken); the human row itself has none.

    Args:
        enabled: measure MAUVE (False: no features are taken and MAUVE is left out).
        featurizer: the model whose hidden states are the features (what ``decoders.load_model`` accepts); None:
            the scoring model (``scoring_model``, or each generating model, whose generated token ids are then
            used as they are).
        pooling: ``"mean"`` (the mean over the text's tokens, as for coherence) or ``"last"`` (the last token's
            state, as in the paper).
        num_buckets: k-means buckets, or ``"auto"`` (``max(2, round(min(|P|, |Q|) / 10))``).
        kmeans_explained_var: the share of variance the PCA before k-means keeps.
        kmeans_num_redo: k-means runs from different initialisations (the best is kept).
        kmeans_max_iter: at most this many k-means iterations per run.
        divergence_curve_discretization_size: points on the divergence curve.
        mauve_scaling_factor: the scaling constant ``c`` (5 in the paper).
        seed: the seed of the k-means initialisations.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    featurizer: str | None = None
    pooling: Literal["last", "mean"] = "mean"
    num_buckets: Literal["auto"] | int = "auto"
    kmeans_explained_var: float = Field(default=metrics.MAUVE_EXPLAINED_VARIANCE, gt=0, lt=1)
    kmeans_num_redo: int = Field(default=metrics.MAUVE_KMEANS_REDO, ge=1)
    kmeans_max_iter: int = Field(default=metrics.MAUVE_KMEANS_MAX_ITER, ge=1)
    divergence_curve_discretization_size: int = Field(default=metrics.MAUVE_CURVE_POINTS, ge=2)
    mauve_scaling_factor: float = Field(default=metrics.MAUVE_SCALING, gt=0)
    seed: int = Field(default=metrics.MAUVE_SEED, ge=0)

    @field_validator("num_buckets")
    @classmethod
    def _buckets(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 2:
            raise ValueError(f"at least 2 buckets, or 'auto'; got {value}")
        return value

    def quantize(self) -> dict[str, Any]:
        """The keyword arguments of :func:`metrics.mauve_quantize`."""
        names = {"num_buckets", "kmeans_explained_var", "kmeans_num_redo", "kmeans_max_iter", "seed"}
        return self.model_dump(include=names)

    def curve(self) -> dict[str, Any]:
        """The keyword arguments of :func:`metrics.mauve_from_histograms`."""
        return self.model_dump(include={"divergence_curve_discretization_size", "mauve_scaling_factor"})


class QualityConfig(BaseModel):
    """What a sweep runs. Paths are relative to the config file's folder.

    Args:
        name: stem of the output files (``<name>.json``, ``<name>.csv``, ``<name>.md``, ``<name>_*.png``).
        output: the folder for results and work units.
        prompts: a JSON Lines file with a ``prompt`` and a human ``continuation`` per line.
        max_prompts: use the first this many prompts (all when None).
        batch_size: prompts per work unit.
        rows_per_call: at most this many rows (prompts × units) in one ``generate`` call of single-search
            units; the units of other searches share a call only with their strategy's other seeds.
        max_new_tokens: tokens per generation; human continuations are cut to as many tokens.
        ignore_eos: generate all ``max_new_tokens`` tokens even past an end-of-sequence token.
        seeds: one pass over the prompts per seed (prompt ``i`` uses seed ``seed · 1000003 + i``); a strategy that
            cannot depend on the seed runs once.
        models: what ``decoders.load_model`` accepts (``"default"``: the embedded SmolLM2-135M-Instruct).
        scoring_model: the model perplexity is measured under (None: each generating model scores its own
            texts, as in Holtzman et al.; otherwise the texts are re-tokenized for it).
        human: include the human continuations as a row.
        strategies: name → a preset name, an inline strategy table, or a ``.json``/``.toml`` strategy file.
        curve_metrics: the metrics plotted against k, p and temperature.
        rank_frequency_strategies: the strategies drawn on the rank-frequency plot (None: all).
        bootstrap_resamples: resamples of the prompts behind each interval.
        bootstrap_seed: the seed of the resampling (the same units and seed give the same intervals).
        mauve: how MAUVE is measured (:class:`MauveConfig`).

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
    rows_per_call: int = Field(default=256, ge=1)
    max_new_tokens: int = Field(default=64, ge=1)
    ignore_eos: bool = True
    seeds: list[int] = Field(default=[0], min_length=1)
    models: list[str] = Field(default=["default"], min_length=1)
    scoring_model: str | None = None
    human: bool = True
    strategies: dict[str, str | dict[str, Any]] = Field(min_length=1)
    curve_metrics: list[Literal[METRICS]] = ["perplexity", "self_bleu4", "zipf", "repetition_pct"]  # type: ignore[valid-type]
    rank_frequency_strategies: list[str] | None = None
    bootstrap_resamples: int = Field(default=1000, ge=100)
    bootstrap_seed: int = Field(default=0, ge=0)
    mauve: MauveConfig = MauveConfig()

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
        seed: the seed (None for the human row, and for a strategy that cannot depend on the seed).
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


def seeded(strategy: decoders.Strategy) -> bool:
    """Whether a strategy's tokens can depend on the seed: it samples (its selector, or a sampling search such
    as stochastic beam), or it has a processor from a plugin (which may draw random numbers).

    Example:
        >>> seeded(decoders.Strategy.resolve("greedy")), seeded(decoders.Strategy.resolve("top_p"))
        (False, True)
    """
    builtin = all(type(p).__module__ == decoders.builtins.__name__ for p in strategy.processors)
    return strategy.selector.kind != "greedy" or strategy.build_search().samples or not builtin


def plan_units(config: QualityConfig, strategies: dict[str, decoders.Strategy]) -> list[Unit]:
    """Every unit of the sweep: model, then strategy (human first), seed, batch. A strategy that cannot depend
    on the seed (see :func:`seeded`) has one unit per batch, with seed None."""
    prompts = read_prompts(config)
    batches = [prompts[i : i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
    settings = config.model_dump(mode="json", include={"max_new_tokens", "ignore_eos", "scoring_model"})
    settings["record"] = RECORD_VERSION
    units = []
    for model in config.models:
        rows = [(HUMAN, None, None)] if config.human else []
        for name, strategy in strategies.items():
            rows += [(name, _identity(strategy), seed) for seed in (config.seeds if seeded(strategy) else [None])]
        for name, spec, seed in rows:
            for index, batch in enumerate(batches):
                identity = json.dumps([model, spec, seed, batch, settings], sort_keys=True)
                key = hashlib.sha256(identity.encode()).hexdigest()[:10]
                units.append(Unit(model, name, seed, index, spec, key))
    return units


def plan_calls(config: QualityConfig, units: list[Unit]) -> list[list[Unit]]:
    """The units grouped into ``generate`` calls, in the order of their first unit.

    A call holds units of one model and one batch of prompts, so every row has the padding it would have
    alone: the units whose strategies use the single search (a mixed batch, at most ``rows_per_call`` rows),
    or one strategy's units of another search (its seeds), or the human row's unit alone.
    """
    size = len(read_prompts(config)[: config.batch_size])
    groups: dict[tuple, list[list[Unit]]] = {}
    for unit in units:
        search = None if unit.spec is None else unit.spec.get("search")
        mixable = unit.spec is not None and search is None
        key = (unit.model, unit.batch, "single" if mixable else unit.strategy)
        calls = groups.setdefault(key, [[]])
        full = unit.spec is None or (mixable and (len(calls[-1]) + 1) * size > max(config.rows_per_call, size))
        if calls[-1] and full:
            calls.append([])
        calls[-1].append(unit)
    return [call for calls in groups.values() for call in calls]


def _load(name: str | None) -> Any:
    return decoders.load_model(None if name in (None, "default") else name)


def run_call(config: QualityConfig, units: list[Unit]) -> list[dict[str, Any]]:
    """Generate (or take the human text of) the prompts of a call's units and score every continuation.

    The units share a model and a batch of prompts (see :func:`plan_calls`); one ``decoders.generate`` call
    runs them all, each row with its unit's strategy and seed. With no ``scoring_model``, a continuation's NLL
    is the generating model's own log-probability of each token, recorded during generation.

    Returns:
        each unit's record: for each prompt its index, the seed, the text, continuation token ids, the sum and
        count of the continuation's NLL under the scoring model, the mean entropy of its steps (None for the
        human text and for beams), the coherence of prompt and continuation (:func:`metrics.coherence` of
        the scoring model's mean-pooled embeddings) and, unless MAUVE is disabled, the text's MAUVE features
        (:func:`add_features`).

    Example:
        >>> [record] = run_call(config, plan_units(config, strategies)[:1])  # doctest: +SKIP
        >>> record["rows"][0].keys()  # doctest: +SKIP
        dict_keys(['prompt_index', 'seed', 'text', 'token_ids', 'nll_sum', 'nll_count', 'mean_entropy', 'coherence',
        'features'])
    """
    loaded = _load(units[0].model)
    first = units[0].batch * config.batch_size
    batch = read_prompts(config)[first : first + config.batch_size]
    prompts = [row["prompt"] for row in batch]
    own_scores = config.scoring_model is None
    nlls: list[list[float] | None]
    if units[0].spec is None:
        tokenizer = loaded.tokenizer
        prompt_ids = tokenizer(prompts)["input_ids"]
        token_ids = [
            ids[: config.max_new_tokens]
            for ids in tokenizer([row["continuation"] for row in batch], add_special_tokens=False)["input_ids"]
        ]
        texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        entropies, nlls = [None] * len(batch), [None] * len(batch)
    else:
        specs = [unit.spec for unit in units for _ in batch]
        results = decoders.generate(
            prompts * len(units), specs if len({json.dumps(s, sort_keys=True) for s in specs}) > 1 else specs[0],
            model=loaded, max_new_tokens=config.max_new_tokens,
            seed=[(unit.seed or 0) * 1_000_003 + first + i for unit in units for i in range(len(batch))],
            trace=True, top=1, ignore_eos=config.ignore_eos, logprobs=0 if own_scores else None,
        )  # fmt: skip
        prompt_ids = [r.prompt_ids for r in results]
        kept = [len(r.generated_ids) - (r.finish_reason == "eos") for r in results]
        token_ids = [r.generated_ids[:n] for r, n in zip(results, kept)]
        texts = [r.text for r in results]
        entropies = [metrics.mean_entropy(r.steps) if r.steps is not None else None for r in results]  # None: beams
        # a search that records no log-probabilities (a plugin's may not) is scored by a forward pass below
        nlls = [
            [-t.chosen.raw for t in r.logprobs[:n]] if own_scores and r.logprobs is not None else None
            for r, n in zip(results, kept)
        ]
    if own_scores:
        scorer, score_prompts, score_continuations = loaded, prompt_ids, token_ids
    else:
        scorer = _load(config.scoring_model)
        score_prompts = scorer.tokenizer(prompts)["input_ids"] * (len(texts) // len(prompts))
        score_continuations = scorer.tokenizer(texts, add_special_tokens=False)["input_ids"]
    missing = [i for i, nll in enumerate(nlls) if nll is None]
    for i, nll in zip(missing, metrics.continuation_nlls(
        scorer, [score_prompts[i] for i in missing], [score_continuations[i] for i in missing]
    )):  # fmt: skip
        nlls[i] = nll
    scorer_name = config.scoring_model or units[0].model
    coherences = _coherences(scorer, scorer_name, score_prompts[: len(prompts)], score_continuations)
    records = []
    for index, unit in enumerate(units):
        rows = []
        for i in range(len(batch)):
            row = index * len(batch) + i
            rows.append({
                "prompt_index": first + i, "seed": unit.seed, "text": texts[row], "token_ids": token_ids[row],
                "nll_sum": sum(nlls[row]), "nll_count": len(nlls[row]), "mean_entropy": entropies[row],
                "coherence": coherences[row],
            })  # fmt: skip
        records.append({"unit": asdict(unit), "rows": rows})
    if measures_mauve(config):
        add_features(config, records)
    return records


def measures_mauve(config: QualityConfig) -> bool:
    """Whether the sweep takes MAUVE features: MAUVE is enabled and there are human continuations to compare with."""
    return config.mauve.enabled and config.human


def featurizer_tag(config: QualityConfig, model: str) -> dict[str, str]:
    """What a record's MAUVE features were taken with: the featurizing model (see :class:`MauveConfig`) and the
    pooling. Features with another tag than the config's are taken anew (:func:`run_units`)."""
    return {"model": config.mauve.featurizer or config.scoring_model or model, "pooling": config.mauve.pooling}


def add_features(config: QualityConfig, records: list[dict]) -> None:
    """Give every row of the records its MAUVE feature vector (in place), and each record its :func:`featurizer_tag`.

    A row's text for the featurizer is its prompt followed by its continuation, as MAUVE featurizes whole texts
    (the paper's model texts are prompt + generation, its human texts the whole passages): token ids of the
    prompt, then the row's own continuation ids when the featurizer is the generating model, or its text
    re-tokenized for another featurizer. The vector (:func:`metrics.continuation_features`, which runs each
    prompt once for all the rows that continue it) is stored as base64 of little-endian float16 (rounding of
    2⁻¹¹ relative, far below what moves a text to another k-means bucket).
    """
    prompts = read_prompts(config)
    by_model: dict[str, list[dict]] = {}
    for record in records:
        by_model.setdefault(record["unit"]["model"], []).append(record)
    for model, own in by_model.items():
        tag = featurizer_tag(config, model)
        featurizer = _load(tag["model"])
        rows = [row for record in own for row in record["rows"]]
        prompt_ids = featurizer.tokenizer([prompts[row["prompt_index"]]["prompt"] for row in rows])["input_ids"]
        if tag["model"] == model:
            continuations = [row["token_ids"] for row in rows]
        else:
            continuations = featurizer.tokenizer([row["text"] for row in rows], add_special_tokens=False)["input_ids"]
        vectors = metrics.continuation_features(featurizer, prompt_ids, continuations, pooling=tag["pooling"])
        for row, vector in zip(rows, vectors):
            row["features"] = base64.b64encode(vector.numpy().astype("<f2").tobytes()).decode("ascii")
        for record in own:
            record["featurizer"] = tag


def features_of(rows: list[dict]) -> np.ndarray:
    """The rows' MAUVE feature vectors as a ``[rows, features]`` array (see :func:`add_features`)."""
    return np.stack([np.frombuffer(base64.b64decode(row["features"]), dtype="<f2") for row in rows]).astype(np.float64)


def _current_features(config: QualityConfig, records: list[dict]) -> list[dict]:
    """The records, with the MAUVE features left out of those taken otherwise than the config says (or all of
    them when MAUVE is disabled), so that MAUVE never compares features of two featurizers."""
    checked = []
    for record in records:
        if measures_mauve(config) and record.get("featurizer") == featurizer_tag(config, record["unit"]["model"]):
            checked.append(record)
        else:
            rows = [{k: v for k, v in row.items() if k != "features"} for row in record["rows"]]
            checked.append({**record, "rows": rows})
    return checked


#: the prompts' embeddings per (scoring model, prompt ids): the calls of one batch of prompts compute them once
_prompt_embeddings: dict[tuple[str, tuple[tuple[int, ...], ...]], torch.Tensor] = {}


def _coherences(
    scorer: Any, scorer_name: str, prompt_ids: list[list[int]], continuation_ids: list[list[int]]
) -> list[float | None]:
    """The coherence of each continuation with its prompt (row ``i`` continues prompt ``i mod len(prompt_ids)``);
    None for an empty continuation."""
    key = (scorer_name, tuple(map(tuple, prompt_ids)))
    if key not in _prompt_embeddings:
        _prompt_embeddings[key] = metrics.mean_pooled_embeddings(scorer, prompt_ids)
    prompts = _prompt_embeddings[key]
    filled = [i for i, ids in enumerate(continuation_ids) if ids]
    values: list[float | None] = [None] * len(continuation_ids)
    if filled:
        continuations = metrics.mean_pooled_embeddings(scorer, [continuation_ids[i] for i in filled])
        scores = metrics.coherence(prompts[[i % len(prompt_ids) for i in filled]], continuations)
        for i, score in zip(filled, scores):
            values[i] = score
    return values


def _local_runner(config: QualityConfig, calls: list[list[Unit]]) -> Iterator[tuple[Unit, dict]]:
    for units in calls:
        yield from zip(units, run_call(config, units))


def _ray_runner(address: str | None) -> Callable[[QualityConfig, list[list[Unit]]], Iterator[tuple[Unit, dict]]]:
    """A runner that sends each call to a Ray task and yields its units' results as each call finishes."""
    try:
        import ray
    except ImportError as exc:
        raise SystemExit(f"--executor ray needs Ray, which could not be imported ({exc}): {INSTALL_RAY}") from None

    def run(config: QualityConfig, calls: list[list[Unit]]) -> Iterator[tuple[Unit, dict]]:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        # this file is not an installed module: send its functions by value, so workers need only decoders
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        remote = ray.remote(num_cpus=1)(run_call)
        pending = {remote.remote(config, units): units for units in calls}
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            yield from zip(pending.pop(done), ray.get(done))

    return run


def run_units(
    config: QualityConfig,
    units: list[Unit],
    runner: Callable[[QualityConfig, list[list[Unit]]], Iterator[tuple[Unit, dict]]] = _local_runner,
    console: Console | None = None,
) -> list[dict]:
    """Run the units that have no file yet (in calls, see :func:`plan_calls`; each file written as its call
    finishes) and return every unit's record. A unit whose file lacks MAUVE features, or holds features of
    another featurizer than the config's (:func:`featurizer_tag`), gets them anew here, in this process, and its
    file is rewritten; its generations are kept.

    Args:
        config: the sweep config.
        units: from :func:`plan_units`.
        runner: runs calls and yields ``(unit, record)`` as each call finishes (local, or Ray's).
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
        for unit, record in runner(config, plan_calls(config, pending)):
            path = unit.path(folder)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".tmp").write_text(json.dumps(record))
            path.with_suffix(".tmp").replace(path)
            progress.update(
                task, advance=1, description=f"{Path(unit.model).name} · {unit.strategy} · batch {unit.batch}"
            )
    records = [json.loads(u.path(folder).read_text()) for u in units]
    if measures_mauve(config):
        stale = [
            (unit, record) for unit, record in zip(units, records)
            if record.get("featurizer") != featurizer_tag(config, unit.model)
            or any("features" not in row for row in record["rows"])
        ]  # fmt: skip
        if stale:  # units from before MAUVE, or from another featurizer: their texts stay, their features are new
            add_features(config, [record for _, record in stale])
            for unit, record in stale:
                path = unit.path(folder)
                path.with_suffix(".tmp").write_text(json.dumps(record))
                path.with_suffix(".tmp").replace(path)
    return records


# ---- metrics, tables and plots ------------------------------------------------------------------------------


class MetricData:
    """One strategy's generations as per-prompt totals, from which every metric of any resample of the prompts
    follows (a resample is a weight per prompt: how often it was drawn).

    Perplexity, mean entropy, repetition %, rep-n, distinct-2, Self-BLEU-4 and coherence are ratios of sums over
    texts (:func:`metrics.ratio_of_sums`); diversity is a product of three of them; the Zipf coefficient is fitted
    to the resample's token counts. Two terms are measured once on all the texts, then resampled as they are:
    each text's BLEU against the other texts of its seed, and its share of distinct bigrams (each bigram
    counts ``1 / (its occurrences)``, so the shares add up to the number of distinct bigrams) — resampling the
    texts themselves would pair a text with its own copy. MAUVE against the ``reference`` rows (the human
    continuations) quantises the features of both once, on all the texts (:func:`metrics.mauve_quantize`); a
    resample is then a weighted pair of bucket histograms (each prompt's human text and every seed's text counted
    as often as the prompt is drawn), so the interval covers the variation between prompts and seeds, not that
    of the k-means' own initialisation. In a synthetic trial (Gaussian features, 100 prompts × 3 seeds, 150
    fresh data sets per shift) the resamples' spread matched the spread of MAUVE over fresh data (sd 0.042,
    0.076, 0.107 against 0.033, 0.070, 0.117), while quantising each resample anew (its repeated texts make
    buckets of copies) pulled MAUVE down and widened it (sd 0.062-0.119). Resampling adds noise to the
    histograms, which lowers MAUVE, so the percentile interval lies mostly below the value.

    Args:
        rows: the records' rows (``prompt_index``, ``seed``, ``text``, ``token_ids``, ``nll_sum``, ...).
        prompts: the prompt indices, in the order of the weights (None: those of the rows, sorted).
        reference: the human continuations' rows, for MAUVE (None: no MAUVE; so too when a row of either side
            has no ``features``, or the reference misses a prompt).
        mauve: MAUVE's settings.

    Example:
        >>> data = MetricData(rows)  # doctest: +SKIP
        >>> data.value("perplexity"), data.interval("perplexity", seed=0)  # doctest: +SKIP
        (2.9, (2.7, 3.1))
    """

    def __init__(
        self, rows: list[dict], prompts: list[int] | None = None, *, reference: list[dict] | None = None,
        mauve: MauveConfig | None = None,
    ):  # fmt: skip
        self.prompts = prompts if prompts is not None else sorted({row["prompt_index"] for row in rows})
        position = {prompt: i for i, prompt in enumerate(self.prompts)}
        if {row["prompt_index"] for row in rows} != set(self.prompts):
            raise ValueError("the rows do not cover the same prompts as the other side: compare the same prompts")
        self.totals: dict[str, np.ndarray] = {}
        by_seed: dict[Any, list[int]] = {}
        for index, row in enumerate(rows):
            by_seed.setdefault(row["seed"], []).append(index)
        bleu = np.full(len(rows), np.nan)
        for members in by_seed.values():
            if len(members) >= 2:
                bleu[members] = metrics.self_bleu_scores([rows[i]["text"] for i in members])
        bigrams = Counter(gram for row in rows for gram in metrics.ngrams(row["token_ids"], 2))
        vocabulary = {token: i for i, token in enumerate(sorted({t for row in rows for t in row["token_ids"]}))}
        self.token_counts = np.zeros((len(self.prompts), len(vocabulary)))
        for index, row in enumerate(rows):
            add = self._adder(position[row["prompt_index"]])
            grams = metrics.ngrams(row["token_ids"], 2)
            add("nll", row["nll_sum"]), add("tokens", row["nll_count"]), add("texts", 1)
            add("loops", 100.0 * metrics.ends_in_loop(row["token_ids"]))
            add("distinct", sum(1 / bigrams[g] for g in grams)), add("bigrams", len(grams))
            for n in REP_NS:
                grams = metrics.ngrams(row["token_ids"], n)
                add(f"unique_{n}", len(set(grams))), add(f"ngrams_{n}", len(grams))
            if not np.isnan(bleu[index]):
                add("bleu", bleu[index]), add("bleu_texts", 1)
            if row["mean_entropy"] is not None:
                add("entropy", row["mean_entropy"] * row["nll_count"]), add("entropy_tokens", row["nll_count"])
            if row["coherence"] is not None:
                add("coherence", row["coherence"]), add("coherent_texts", 1)
            np.add.at(self.token_counts[position[row["prompt_index"]]], [vocabulary[t] for t in row["token_ids"]], 1)
        self.mauve = mauve or MauveConfig()
        self.mauve_counts: tuple[np.ndarray, np.ndarray] | None = None
        if reference is not None:
            human = [row for row in reference if row["prompt_index"] in position]
            covered = {row["prompt_index"] for row in human} == set(self.prompts)
            if covered and all("features" in row for row in [*rows, *human]):
                p_labels, q_labels, buckets = metrics.mauve_quantize(
                    features_of(human), features_of(rows), **self.mauve.quantize()
                )
                counts = np.zeros((2, len(self.prompts), buckets))
                for side, side_rows, labels in ((0, human, p_labels), (1, rows, q_labels)):
                    np.add.at(counts[side], ([position[row["prompt_index"]] for row in side_rows], labels), 1)
                self.mauve_counts = (counts[0], counts[1])

    def _adder(self, prompt: int) -> Callable[[str, float], None]:
        def add(name: str, value: float) -> None:
            self.totals.setdefault(name, np.zeros(len(self.prompts)))[prompt] += value

        return add

    def _ratio(self, numerator: str, denominator: str) -> Callable[[np.ndarray], np.ndarray] | None:
        if denominator not in self.totals:
            return None
        return metrics.ratio_of_sums(self.totals[numerator], self.totals[denominator])

    def statistic(self, metric: str) -> Callable[[np.ndarray], np.ndarray] | None:
        """The metric as a function of prompt weights ``[B, prompts]`` → ``[B]``; None when it does not apply
        (mean entropy without a trace, Self-BLEU of single texts, MAUVE without a reference or features)."""
        if metric == "mauve":
            if self.mauve_counts is None:
                return None
            human, model = self.mauve_counts
            return lambda weights: metrics.mauve_from_histograms(weights @ human, weights @ model, **self.mauve.curve())
        if metric == "perplexity":
            return lambda weights: np.exp(self._ratio("nll", "tokens")(weights))
        if metric == "zipf":
            return self._zipf
        if metric == "diversity":
            ratios = [self._ratio(f"unique_{n}", f"ngrams_{n}") for n in REP_NS]
            return lambda weights: np.prod([ratio(weights) for ratio in ratios], axis=0)
        if metric.startswith("rep_"):
            ratio = self._ratio(f"unique_{metric[4:]}", f"ngrams_{metric[4:]}")
            return lambda weights: 1 - ratio(weights)
        numerator, denominator = {
            "self_bleu4": ("bleu", "bleu_texts"), "repetition_pct": ("loops", "texts"),
            "distinct_2": ("distinct", "bigrams"), "mean_entropy": ("entropy", "entropy_tokens"),
            "coherence": ("coherence", "coherent_texts"),
        }[metric]  # fmt: skip
        return self._ratio(numerator, denominator)

    def _zipf(self, weights: np.ndarray) -> np.ndarray:
        """The Zipf coefficient of each resample: −slope of log frequency vs log rank (least squares)."""
        slopes = []
        with np.errstate(invalid="ignore", divide="ignore"):  # one distinct token: no slope (NaN, left out)
            for chunk in np.array_split(weights, max(1, len(weights) // 100)):
                counts = -np.sort(-(chunk @ self.token_counts), axis=1)
                mask = counts > 0
                x = np.where(mask, np.log(np.arange(1, counts.shape[1] + 1)), 0.0)
                y = np.where(mask, np.log(np.where(mask, counts, 1.0)), 0.0)
                n = mask.sum(axis=1)
                dx = np.where(mask, x - (x.sum(axis=1) / n)[:, None], 0.0)
                dy = np.where(mask, y - (y.sum(axis=1) / n)[:, None], 0.0)
                slopes.append((dx * dy).sum(axis=1) / (dx * dx).sum(axis=1))
        return -np.concatenate(slopes)

    def value(self, metric: str) -> float | None:
        """The metric on all the texts (every prompt weighted 1)."""
        statistic = self.statistic(metric)
        return None if statistic is None else float(statistic(np.ones((1, len(self.prompts))))[0])

    def interval(self, metric: str, *, resamples: int = 1000, seed: int = 0) -> tuple[float, float] | None:
        """The metric's 95 % interval over the prompts (see :func:`interval`)."""
        statistic = self.statistic(metric)
        return None if statistic is None else interval(metric, statistic, len(self.prompts), resamples, seed)


def interval(
    metric: str, statistic: Callable[[np.ndarray], np.ndarray], prompts: int, resamples: int, seed: int
) -> tuple[float, float]:
    """A metric's 95 % interval: the percentile bootstrap over prompts, except for the Zipf coefficient.

    A bootstrap resample repeats whole texts, which doubles the counts of their rare tokens and steepens the
    fitted Zipf slope (in a trial on 15 prompts of the default sweep, the percentile interval lay above the
    coefficient of the texts themselves for every strategy); its interval is the delete-one-prompt jackknife's normal interval instead, which
    repeats nothing (:func:`metrics.jackknife_interval`).
    """
    if metric == "zipf":
        return metrics.jackknife_interval(statistic, prompts)
    return metrics.bootstrap_interval(statistic, prompts, resamples=resamples, seed=seed)


def _by_strategy(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The rows of each (model, strategy), in the records' order."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        unit = record["unit"]
        grouped.setdefault((unit["model"], unit["strategy"]), []).extend(record["rows"])
    return grouped


def summarize(config: QualityConfig, strategies: dict[str, decoders.Strategy], records: list[dict]) -> list[dict]:
    """One row of metrics per (model, strategy), human first, from the units' records, each metric with its 95 %
    bootstrap interval over prompts in ``ci95`` (see :class:`MetricData`).

    Perplexity pools the NLL of every token; Self-BLEU-4 is each generation's BLEU against the others of the same
    seed, averaged; rep-n and diversity pool the n-gram counts (Su et al. 2022); MAUVE compares all of a
    strategy's generations with the human continuations of the same model's units (None for the human row); the
    other metrics pool all generations.
    """
    summary = []
    grouped = _by_strategy(_current_features(config, records))
    for (model, name), rows in grouped.items():
        reference = grouped.get((model, HUMAN)) if name != HUMAN else None
        data = MetricData(rows, reference=reference, mauve=config.mauve)
        values = {metric: data.value(metric) for metric in METRICS}
        intervals = {
            metric: data.interval(metric, resamples=config.bootstrap_resamples, seed=config.bootstrap_seed)
            for metric in METRICS
        }
        summary.append({
            "strategy": name, **values,
            "ci95": {metric: None if ci is None else list(ci) for metric, ci in intervals.items()},
            "model": model,
            "description": "human continuation" if name == HUMAN else strategies[name].describe(),
            "generations": len(rows),
            "prompts": len(data.prompts),
            "seeds": len({row["seed"] for row in rows}),
            "tokens": sum(len(row["token_ids"]) for row in rows),
        })  # fmt: skip
    return summary


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _with_interval(value: Any, interval: list[float] | None) -> str:
    """``mean [lo, hi]``, or the value alone when it has no interval."""
    if interval is None:
        return _format(value)
    return f"{_format(value)} [{_format(interval[0])}, {_format(interval[1])}]"


def markdown_table(summary: list[dict]) -> str:
    """The summary as a Markdown table (one row per model and strategy), each metric as ``mean [lo, hi]``."""
    several = len({row["model"] for row in summary}) > 1
    columns = (["model"] if several else []) + ["strategy", "description", *METRICS]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c in ("model", "strategy", "description") else "---:" for c in columns) + "|",
    ]
    lines += [
        "| " + " | ".join(_with_interval(row[c], row["ci95"].get(c)) if c in METRICS else _format(row[c])
                          for c in columns) + " |"
        for row in summary
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _csv_rows(summary: list[dict]) -> list[dict]:
    """The summary flattened for CSV: each metric's interval as ``<metric>_lo`` and ``<metric>_hi`` columns."""
    flat = []
    for row in summary:
        out = {key: value for key, value in row.items() if key != "ci95"}
        for metric in METRICS:
            interval = row["ci95"][metric]
            out[f"{metric}_lo"], out[f"{metric}_hi"] = interval if interval is not None else (None, None)
        flat.append(out)
    return flat


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
    """Each curve metric against k, p and temperature with its 95 % interval as error bars, and the human value
    as a dashed line in its shaded interval."""
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
            shown = [(x, values[name]) for x, name in curve if values[name][metric] is not None]
            xs, ys = [x for x, _ in shown], [row[metric] for _, row in shown]
            lows, highs = [row["ci95"][metric][0] for _, row in shown], [row["ci95"][metric][1] for _, row in shown]
            axis.plot(xs, ys, "o-", color="tab:blue")
            # the interval as a bar from low to high (a percentile interval need not be centred on the value)
            axis.vlines(xs, lows, highs, color="tab:blue", linewidth=1.2)
            axis.plot(xs + xs, lows + highs, "_", color="tab:blue", markersize=8)
            if HUMAN in values and values[HUMAN][metric] is not None:
                human = values[HUMAN]
                axis.axhline(human[metric], color="black", linestyle="--", linewidth=1, label="human (95 % band)")
                axis.axhspan(*human["ci95"][metric], color="black", alpha=0.08, linewidth=0)
            if kind == "top_k":
                axis.set_xscale("log")
            if metric == "perplexity":
                axis.set_yscale("log")
            axis.set_ylabel(metric)
            axis.grid(alpha=0.3)
            if row == len(metrics_shown) - 1:
                axis.set_xlabel(labels[kind])
    axes[0][0].legend(loc="best")
    figure.suptitle(f"{config.name}: metrics vs decoding parameter, 95 % intervals (dashed: human text)")
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
        flat = _csv_rows(summary)
        writer = csv.DictWriter(handle, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
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
        title=f"{config.name}: {summary[0]['prompts']} prompts × {len(config.seeds)} seeds × {config.max_new_tokens} "
        f"tokens, {runtime:.0f} s (mean [95 % interval])"
    )
    for column in ["strategy", *METRICS]:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in summary:
        table.add_row(row["strategy"], *(_with_interval(row[c], row["ci95"][c]) for c in METRICS))
    console.print(table)
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return summary


def _side(name: str, strategies: dict[str, decoders.Strategy]) -> tuple[str, set[int] | None]:
    """``"top_p"`` → ("top_p", None: every seed); ``"top_p@0,2"`` → ("top_p", {0, 2})."""
    strategy, _, seeds = name.partition("@")
    if strategy not in {HUMAN, *strategies}:
        raise ConfigError(f"--compare: no strategy '{strategy}' in the config; it has {', '.join([HUMAN, *strategies])}")
    try:
        chosen = {int(seed) for seed in seeds.split(",")} if seeds else None
    except ValueError:
        raise ConfigError(f"--compare {name}: after '@' come seeds separated by commas, e.g. {strategy}@0,1") from None
    return strategy, chosen


def compare(
    config: QualityConfig, strategies: dict[str, decoders.Strategy], records: list[dict], a: str, b: str
) -> dict[str, Any]:
    """The paired difference A − B of every metric over the same prompts, with its 95 % bootstrap interval.

    Both sides are resampled with the same draws of prompts (each drawn prompt with all its seeds), so what the
    prompts have in common cancels out; MAUVE compares each side with the human continuations (needs the human
    row's records). A side is a strategy name, or ``name@s,t`` for only seeds ``s`` and
    ``t`` of it (a strategy that cannot depend on the seed has the same texts for every seed). Uses the config's
    first model.

    Returns:
        ``{"a", "b", "model", "prompts", "resamples", "bootstrap_seed", "metrics": {metric: {"a", "b",
        "difference", "ci95": [lo, hi], "excludes_zero"}}}`` (a metric that applies to one side only is left out).

    Example:
        >>> compare(config, strategies, records, "greedy", "pure_sampling")["metrics"]["perplexity"]  # doctest: +SKIP
        {'a': 2.9, 'b': 36.1, 'difference': -33.2, 'ci95': [-39.0, -28.1], 'excludes_zero': True}
    """
    model = config.models[0]
    grouped = _by_strategy(_current_features(config, records))
    sides = []
    for name in (a, b):
        strategy, seeds = _side(name, strategies)
        rows = [r for r in grouped[(model, strategy)] if seeds is None or r["seed"] is None or r["seed"] in seeds]
        if not rows:
            raise ConfigError(f"--compare {name}: the sweep has no generations of {strategy} with seeds {sorted(seeds)}")
        sides.append(rows)
    prompts = sorted({row["prompt_index"] for row in sides[0]})
    references = [None if _side(name, strategies)[0] == HUMAN else grouped.get((model, HUMAN)) for name in (a, b)]
    data_a, data_b = (
        MetricData(side, prompts, reference=reference, mauve=config.mauve) for side, reference in zip(sides, references)
    )
    results = {}
    for metric in METRICS:
        first, second = data_a.statistic(metric), data_b.statistic(metric)
        if first is None or second is None:
            continue
        low, high = interval(
            metric, lambda weights: first(weights) - second(weights), len(prompts), config.bootstrap_resamples,
            config.bootstrap_seed,
        )  # fmt: skip
        value_a, value_b = data_a.value(metric), data_b.value(metric)
        results[metric] = {
            "a": value_a, "b": value_b, "difference": value_a - value_b, "ci95": [low, high],
            "excludes_zero": bool(low > 0 or high < 0),
        }  # fmt: skip
    return {
        "a": a, "b": b, "model": model, "prompts": len(prompts), "resamples": config.bootstrap_resamples,
        "bootstrap_seed": config.bootstrap_seed, "metrics": results,
    }  # fmt: skip


def compare_markdown(comparison: dict[str, Any]) -> str:
    """A comparison as a Markdown table: per metric A, B, A − B [95 % interval] and whether it excludes zero."""
    a, b = comparison["a"], comparison["b"]
    lines = [
        f"{a} − {b}: paired bootstrap over {comparison['prompts']} prompts (all seeds of a drawn prompt), "
        f"{comparison['resamples']} resamples, seed {comparison['bootstrap_seed']}\n",
        f"| metric | {a} | {b} | difference [95 % interval] | excludes 0 |",
        "|---|---:|---:|---:|---|",
    ]
    for metric, row in comparison["metrics"].items():
        lines.append(
            f"| {metric} | {_format(row['a'])} | {_format(row['b'])} | {_with_interval(row['difference'], row['ci95'])} "
            f"| {'yes' if row['excludes_zero'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def run_compare(config_path: str | Path, a: str, b: str, console: Console | None = None) -> dict[str, Any]:
    """Compare two strategies of a finished sweep (:func:`compare`) from its unit files; write
    ``<output>/<name>_compare_<a>_vs_<b>.json`` and ``.md`` and print the table.

    Example:
        >>> run_compare("benchmarks/quality.toml", "greedy", "pure_sampling")["metrics"]["rep_4"]["excludes_zero"]  # doctest: +SKIP
        True
    """
    console = console or Console()
    config, strategies = load_config(config_path)
    names = {_side(side, strategies)[0] for side in (a, b)}
    folder = config.output / f"{config.name}_units"
    wanted = names | ({HUMAN} if measures_mauve(config) else set())  # MAUVE's reference
    units = [u for u in plan_units(config, strategies) if u.strategy in wanted and u.model == config.models[0]]
    missing = [u for u in units if not u.path(folder).is_file()]
    if missing:
        raise ConfigError(
            f"--compare: {len(missing)} of the {len(units)} units of {' and '.join(sorted(wanted))} are not in "
            f"{folder} "
            f"(e.g. {missing[0].strategy}, batch {missing[0].batch}): run the sweep first"
        )
    comparison = compare(config, strategies, [json.loads(u.path(folder).read_text()) for u in units], a, b)
    stem = f"{config.name}_compare_{_slug(a.replace('@', '_seed'))}_vs_{_slug(b.replace('@', '_seed'))}"
    (config.output / f"{stem}.json").write_text(json.dumps(comparison, indent=2) + "\n")
    table = compare_markdown(comparison)
    (config.output / f"{stem}.md").write_text(table)
    console.print(table)
    console.print(f"wrote {config.output / stem}.json, .md")
    return comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", type=Path, default=DEFAULT_CONFIG, help="sweep config (TOML)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local", help="where the work units run")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument(
        "--compare", nargs=2, metavar=("A", "B"),
        help="instead of running: the paired difference A − B of every metric over the finished sweep's prompts, "
        "with its 95%% interval (A@0,1: only seeds 0 and 1 of A)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.address and args.executor != "ray":
        parser.error("--address goes with --executor ray")
    try:
        if args.compare:
            run_compare(args.config, *args.compare)
        else:
            run_sweep(args.config, args.executor, args.address)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
