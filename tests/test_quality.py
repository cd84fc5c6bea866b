"""The quality sweep (benchmarks/quality.py) end to end on a tiny model: results, resume, config errors, Ray, MAUVE;
and the committed prompt sets."""

import csv
import importlib.util
import itertools
import json
import math
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "quality.py"
REQUIRED = {
    "strategy", "perplexity", "self_bleu4", "zipf", "repetition_pct", "distinct_2", "mean_entropy", "rep_2", "rep_3",
    "rep_4", "diversity", "coherence", "mauve", "ci95",
}
PROMPTS = [
    ("The quick brown fox", " jumps over the lazy dog."),
    ("Once upon a time", " there was a small model."),
    ("Decoding strategies choose", " the next token: greedy, sampling."),
    ("Artificial intelligence is", " transforming the world."),
]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and Ray's pickling look the module up by name
    spec.loader.exec_module(module)
    return module


def write_config(folder: Path, model_dir: Path, **overrides) -> Path:
    (folder / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "continuation": c}) + "\n" for p, c in PROMPTS)
    )
    (folder / "top_k.toml").write_text('[[processors]]\nkind = "top_k"\ntop_k = 5\n\n[selector]\nkind = "sample"\n')
    lines = {
        "name": '"tiny"', "output": '"out"', "prompts": '"prompts.jsonl"', "batch_size": "2", "max_new_tokens": "8",
        "seeds": "[0, 1]", "models": json.dumps([str(model_dir)]), **overrides,
    }  # fmt: skip
    text = "".join(f"{key} = {value}\n" for key, value in lines.items())
    text += (
        "[strategies]\n"
        'greedy = "greedy"\n'
        'pure = "pure_sampling"\n'
        '"t0.7" = { processors = [{ kind = "temperature", temperature = 0.7 }], selector = { kind = "sample" } }\n'
        'top_k_5 = "top_k.toml"\n'
    )
    path = folder / "sweep.toml"
    path.write_text(text)
    return path


def assert_same_results(records, others):
    """The same units with the same tokens, and the same scores up to float rounding."""
    assert [r["unit"] for r in records] == [r["unit"] for r in others]
    for record, other in zip(records, others):
        assert [r["token_ids"] for r in record["rows"]] == [r["token_ids"] for r in other["rows"]]
        for mine, theirs in zip(record["rows"], other["rows"]):
            assert mine["nll_sum"] == pytest.approx(theirs["nll_sum"], rel=1e-4)
            assert mine["coherence"] == pytest.approx(theirs["coherence"], abs=1e-5)


def test_sweep_writes_metrics_tables_and_plots(quality, tmp_path, tiny_gpt2_dir):
    rows = quality.run_sweep(write_config(tmp_path, tiny_gpt2_dir))
    out = tmp_path / "out"
    payload = json.loads((out / "tiny.json").read_text())
    assert [r["strategy"] for r in payload["results"]] == ["human", "greedy", "pure", "t0.7", "top_k_5"]
    assert payload["results"] == rows
    for row in rows:
        assert REQUIRED <= set(row)
        assert row["perplexity"] > 1 and 0 <= row["self_bleu4"] <= 1 and 0 <= row["repetition_pct"] <= 100
        assert 0 < row["distinct_2"] <= 1
        assert 0 <= row["diversity"] <= 1 and -1 <= row["coherence"] <= 1
        for metric, interval in row["ci95"].items():
            if row[metric] is None:
                assert interval is None
            else:
                low, high = interval
                assert low <= high
        low, high = row["ci95"]["perplexity"]
        assert low <= row["perplexity"] <= high
    human, greedy, pure = rows[0], rows[1], rows[2]
    assert human["mean_entropy"] is None and human["generations"] == 4
    # greedy cannot depend on the seed: it runs once, not once per seed
    assert greedy["generations"] == 4 and greedy["seeds"] == 1 and greedy["tokens"] == 4 * 8
    assert pure["generations"] == 8 and pure["seeds"] == 2 and pure["tokens"] == 8 * 8  # 4 prompts × 2 seeds × 8
    assert 0 < rows[4]["mean_entropy"] <= 1.61  # top-k 5: at most ln 5
    # MAUVE against the human continuations, for every generated row (the human row has none)
    assert human["mauve"] is None and human["ci95"]["mauve"] is None
    for row in rows[1:]:
        low, high = row["ci95"]["mauve"]
        assert 0 < row["mauve"] <= 1 and 0 <= low <= high <= 1
    with (out / "tiny.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["strategy"] for r in table] == [r["strategy"] for r in rows]
    assert float(table[2]["perplexity_lo"]) == pytest.approx(pure["ci95"]["perplexity"][0])
    assert float(table[2]["mauve"]) == pytest.approx(pure["mauve"]) and table[0]["mauve"] == ""
    assert float(table[2]["mauve_hi"]) == pytest.approx(pure["ci95"]["mauve"][1])
    assert payload["config"]["mauve"]["pooling"] == "mean" and payload["config"]["mauve"]["num_buckets"] == "auto"
    markdown = (out / "tiny.md").read_text()
    assert "| coherence | mauve |" in markdown
    low, high = pure["ci95"]["mauve"]
    assert f"| {pure['mauve']:.3f} [{low:.3f}, {high:.3f}] |" in markdown
    assert re.search(r"\| pure \| sample \| [\d.]+ \[[\d.]+, [\d.]+\] \|", markdown)
    low, high = pure["ci95"]["rep_4"]
    assert f"| {pure['rep_4']:.3f} [{low:.3f}, {high:.3f}] |" in markdown
    assert (out / "tiny_curves.png").stat().st_size > 0 and (out / "tiny_rank_frequency.png").stat().st_size > 0


def test_a_unit_gets_the_same_results_alone_and_in_a_mixed_call(quality, tmp_path, tiny_gpt2_dir):
    config, strategies = quality.load_config(write_config(tmp_path, tiny_gpt2_dir, seeds="[0, 1]"))
    units = [u for u in quality.plan_units(config, strategies) if u.batch == 0 and u.strategy != "human"]
    [call] = [c for c in quality.plan_calls(config, units)]  # greedy (once), pure, t0.7, top_k_5 × 2 seeds
    assert len(call) == 7
    together = quality.run_call(config, call)
    assert_same_results([quality.run_call(config, [unit])[0] for unit in call], together)
    by_seed = {(r["unit"]["strategy"], r["unit"]["seed"]): r for r in together}
    assert [r["token_ids"] for r in by_seed[("pure", 0)]["rows"]] != [r["token_ids"] for r in by_seed[("pure", 1)]["rows"]]


def test_the_nll_recorded_during_generation_is_the_scoring_models(quality, tmp_path, tiny_gpt2_dir, monkeypatch):
    config, strategies = quality.load_config(write_config(tmp_path, tiny_gpt2_dir, seeds="[0]"))
    unit = next(u for u in quality.plan_units(config, strategies) if u.strategy == "t0.7")
    [record] = quality.run_call(config, [unit])
    loaded = quality.decoders.load_model(tiny_gpt2_dir)
    prompts = loaded.tokenizer([p for p, _ in PROMPTS[:2]])["input_ids"]
    nlls = quality.metrics.continuation_nlls(loaded, prompts, [r["token_ids"] for r in record["rows"]])
    assert [r["nll_sum"] for r in record["rows"]] == pytest.approx([sum(n) for n in nlls], rel=1e-4)
    assert [r["nll_count"] for r in record["rows"]] == [8, 8]
    # stochastic beam search records them too; a search that records none has its texts scored by a forward pass
    path = write_config(tmp_path, tiny_gpt2_dir, seeds="[0]")
    path.write_text(path.read_text() + 'sb = { selector = { kind = "sample" }, search = { kind = "stochastic_beam", num_beams = 2 } }\n')
    config, strategies = quality.load_config(path)
    unit = next(u for u in quality.plan_units(config, strategies) if u.strategy == "sb")
    [record] = quality.run_call(config, [unit])
    nlls = quality.metrics.continuation_nlls(loaded, prompts, [r["token_ids"] for r in record["rows"]])
    assert [r["nll_sum"] for r in record["rows"]] == pytest.approx([sum(n) for n in nlls], rel=1e-4)
    assert [r["mean_entropy"] for r in record["rows"]] == [None, None]
    generate = quality.decoders.generate

    def without_logprobs(*args, **kwargs):
        return [r.model_copy(update={"logprobs": None}) for r in generate(*args, **kwargs)]

    monkeypatch.setattr(quality.decoders, "generate", without_logprobs)
    [scored] = quality.run_call(config, [unit])
    assert [r["token_ids"] for r in scored["rows"]] == [r["token_ids"] for r in record["rows"]]
    assert [r["nll_sum"] for r in scored["rows"]] == pytest.approx([sum(n) for n in nlls], rel=1e-6)


def test_calls_group_single_search_units_of_a_batch(quality, tmp_path, tiny_gpt2_dir):
    path = write_config(tmp_path, tiny_gpt2_dir, seeds="[0, 1, 2]", rows_per_call="5")
    path.write_text(path.read_text() + 'beam = { search = { kind = "stochastic_beam", num_beams = 2 }, selector = { kind = "sample" } }\n')
    config, strategies = quality.load_config(path)
    units = quality.plan_units(config, strategies)
    assert len([u for u in units if u.strategy == "greedy"]) == 2  # one per batch, seed None
    calls = quality.plan_calls(config, units)
    for call in calls:
        assert len({(u.model, u.batch) for u in call}) == 1  # one batch of prompts: the same padding
        kinds = {u.strategy if u.spec is None or "search" in u.spec else "single" for u in call}
        assert len(kinds) == 1
    single = [c for c in calls if c[0].spec is not None and "search" not in c[0].spec]
    assert all(len(c) * 2 <= 5 for c in single)  # 2 prompts per batch, at most 5 rows per call
    assert sum(len(c) for c in single) == 2 * (1 + 3 * 3)
    assert sorted(len(c) for c in calls if c[0].strategy == "beam") == [3, 3]  # its seeds share a call
    assert [len(c) for c in calls if c[0].strategy == "human"] == [1, 1]


def test_summary_values_are_the_metric_functions_on_all_texts(quality, tmp_path, tiny_gpt2_dir):
    config, strategies = quality.load_config(write_config(tmp_path, tiny_gpt2_dir, batch_size="4"))
    records = quality.run_units(config, quality.plan_units(config, strategies))
    rows = [row for record in records if record["unit"]["strategy"] == "pure" for row in record["rows"]]
    sequences = [row["token_ids"] for row in rows]
    data = quality.MetricData(rows)
    metrics = quality.metrics
    nll = sum(r["nll_sum"] for r in rows) / sum(r["nll_count"] for r in rows)
    assert data.value("perplexity") == pytest.approx(math.exp(nll))
    assert data.value("zipf") == pytest.approx(metrics.zipf_coefficient(sequences))
    assert data.value("distinct_2") == pytest.approx(metrics.distinct_n(sequences, 2))
    assert data.value("repetition_pct") == pytest.approx(metrics.repetition_pct(sequences))
    for n in (2, 3, 4):
        assert data.value(f"rep_{n}") == pytest.approx(metrics.rep_n(sequences, n, pooled=True))
    assert data.value("diversity") == pytest.approx(metrics.diversity(sequences))
    per_seed = [metrics.self_bleu([r["text"] for r in rows if r["seed"] == seed]) for seed in (0, 1)]
    assert data.value("self_bleu4") == pytest.approx(sum(per_seed) / 2)
    assert data.value("coherence") == pytest.approx(sum(r["coherence"] for r in rows) / len(rows))
    # the same units give the same intervals; another bootstrap seed other ones
    first = quality.summarize(config, strategies, records)
    assert quality.summarize(config, strategies, json.loads(json.dumps(records))) == first
    other = quality.summarize(config.model_copy(update={"bootstrap_seed": 1}), strategies, records)
    assert [r["ci95"] for r in other] != [r["ci95"] for r in first]
    assert [r["perplexity"] for r in other] == [r["perplexity"] for r in first]


def test_compare_a_strategy_with_itself_and_with_another(quality, tmp_path, tiny_gpt2_dir, monkeypatch, capsys):
    path = write_config(tmp_path, tiny_gpt2_dir)
    quality.run_sweep(path)
    monkeypatch.setattr(sys, "argv", ["quality.py", str(path), "--compare", "pure", "pure"])
    quality.main()
    same = json.loads((tmp_path / "out" / "tiny_compare_pure_vs_pure.json").read_text())
    assert set(same["metrics"]) == set(quality.METRICS) and same["prompts"] == 4
    for row in same["metrics"].values():
        assert row["difference"] == 0 and row["ci95"] == [0, 0] and not row["excludes_zero"]
    assert "| perplexity |" in capsys.readouterr().out
    assert "| rep_4 |" in (tmp_path / "out" / "tiny_compare_pure_vs_pure.md").read_text()
    config, strategies = quality.load_config(path)
    records = quality.run_units(config, quality.plan_units(config, strategies))
    split = quality.compare(config, strategies, records, "pure@0", "pure@1")  # the same strategy, other seeds
    assert split["metrics"]["perplexity"]["difference"] != 0
    low, high = split["metrics"]["perplexity"]["ci95"]
    assert low < split["metrics"]["perplexity"]["difference"] < high
    versus = quality.compare(config, strategies, records, "greedy", "human")
    assert "mean_entropy" not in versus["metrics"]  # the human text has no entropy
    with pytest.raises(quality.ConfigError, match="no strategy 'nope'"):
        quality.compare(config, strategies, records, "nope", "pure")
    with pytest.raises(quality.ConfigError, match="seeds separated by commas"):
        quality.compare(config, strategies, records, "pure@x", "pure")


def test_committed_run_greedy_and_pure_sampling_differ_significantly(quality):
    """On the committed default run (its unit files): greedy's lower perplexity and higher repetition are no
    noise, and a strategy against itself, or against itself under other seeds, gives intervals around zero."""
    config, strategies = quality.load_config(quality.DEFAULT_CONFIG)
    folder = config.output / f"{config.name}_units"
    names = ("greedy", "pure_sampling", "top_p_0.95")
    units = [u for u in quality.plan_units(config, strategies) if u.strategy in names]
    records = [json.loads(u.path(folder).read_text()) for u in units]
    result = quality.compare(config, strategies, records, "greedy", "pure_sampling")["metrics"]
    for metric in ("perplexity", "rep_2", "rep_3", "rep_4", "diversity"):
        assert result[metric]["excludes_zero"], metric
    assert result["perplexity"]["ci95"][1] < 0 < result["rep_4"]["ci95"][0]
    itself = quality.compare(config, strategies, records, "pure_sampling", "pure_sampling")["metrics"]
    assert all(row["difference"] == 0 and row["ci95"] == [0, 0] for row in itself.values())
    seeds = quality.compare(config, strategies, records, "top_p_0.95@0", "top_p_0.95@1")["metrics"]
    assert all(low <= 0 <= high for low, high in (row["ci95"] for row in seeds.values()))


def test_resume_runs_only_missing_units(quality, tmp_path, tiny_gpt2_dir, monkeypatch):
    path = write_config(tmp_path, tiny_gpt2_dir, seeds="[0]")

    def run():
        config, strategies = quality.load_config(path)
        return quality.run_units(config, quality.plan_units(config, strategies))

    first = run()
    calls = []
    generate = quality.decoders.generate
    monkeypatch.setattr(quality.decoders, "generate", lambda *a, **k: calls.append(a) or generate(*a, **k))
    assert run() == first and calls == []
    units = sorted((tmp_path / "out" / "tiny_units").rglob("*.json"))
    assert len(units) == 5 * 2  # human + 4 strategies, 2 batches each
    next(u for u in units if u.parent.name == "t0.7").unlink()
    assert_same_results(run(), first)  # rerun alone, not in a mixed call: the same up to the batch's numerics
    assert len(calls) == 1
    # a changed setting makes new units: only the changed strategy runs again
    path.write_text(path.read_text().replace("temperature = 0.7", "temperature = 0.8"))
    run()
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"max_new_token": "8"}, "max_new_token"),
        ({"batch_size": "0"}, "batch_size"),
        ({"curve_metrics": '["speed"]'}, "curve_metrics.0"),
    ],
)
def test_bad_config_names_the_key(quality, tmp_path, tiny_gpt2_dir, override, named):
    with pytest.raises(quality.ConfigError, match=rf"(?m)^  {named}: "):
        quality.load_config(write_config(tmp_path, tiny_gpt2_dir, **override))


def test_bad_strategy_names_the_strategy(quality, tmp_path, tiny_gpt2_dir):
    path = write_config(tmp_path, tiny_gpt2_dir)
    path.write_text(path.read_text() + 'broken = { processors = [{ kind = "top_k", top_k = 0 }] }\n')
    with pytest.raises(quality.ConfigError, match=r"(?s)strategies\.broken: .*top_k"):
        quality.load_config(path)
    path.write_text(path.read_text().replace("top_k = 0", "top_k = 3") + 'human = "greedy"\n')
    with pytest.raises(quality.ConfigError, match=r"strategies: .*'human'"):
        quality.load_config(path)


def test_ray_missing_says_how_to_install(quality, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SystemExit, match=r"pip install 'decoders-lab\[ray\]'"):
        quality._ray_runner(None)


def test_plots_missing_say_how_to_install(quality, monkeypatch):
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit, match=r"plots need matplotlib.*pip install 'decoders-lab\[plots\]'"):
        quality._pyplot()


# the run takes 12-30 s on 2 (shared) cores; past this the test fails instead of hanging (Ray reports the
# interrupted wait as a SystemError caused by RayTimeout)
RAY_TIMEOUT_S = 240


class RayTimeout(Exception):
    pass


@pytest.fixture
def local_ray(monkeypatch):
    """A local Ray for one test: 2 CPUs, a small object store, no dashboard, no usage stats, loopback only.

    Started here (so the runner's own ``ray.init`` is skipped), stopped at the end, and bounded in time: the
    test fails after RAY_TIMEOUT_S instead of hanging.
    """
    ray = pytest.importorskip("ray", reason="Ray is not installed (a large wheel): pip install 'decoders-lab[ray]'")
    import signal

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # never join a cluster that happens to be running
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's single-machine mode (its default on macOS and Windows): every process listens on 127.0.0.1 only.
    # The variable reaches Ray's own Python processes; the driver read it when ray was imported, so set it too.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False, raising=False)

    def expire(signum, frame):
        raise RayTimeout(f"the Ray run took more than {RAY_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(RAY_TIMEOUT_S)
    try:
        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=2, object_store_memory=128 * 1024**2, include_dashboard=False, log_to_driver=False)
        yield ray
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        ray.shutdown()


def test_ray_gives_the_local_results(quality, tmp_path, tiny_gpt2_dir, local_ray):
    records = {}
    for side, runner in (("local", quality._local_runner), ("ray", quality._ray_runner(None))):
        (tmp_path / side).mkdir()
        config, strategies = quality.load_config(write_config(tmp_path / side, tiny_gpt2_dir, seeds="[0]"))
        records[side] = quality.run_units(config, quality.plan_units(config, strategies), runner)
    assert local_ray.is_initialized()  # the units ran on the bounded Ray started above, not on a new one
    assert [node["NodeManagerAddress"] for node in local_ray.nodes()] == ["127.0.0.1"]
    assert len(records["ray"]) == len(records["local"]) == 10
    assert_same_results(records["ray"], records["local"])


# ---- MAUVE through the harness ------------------------------------------------------------------------------


def test_mauve_is_the_metric_on_the_scoring_models_features(quality, tmp_path, tiny_gpt2_dir):
    config, strategies = quality.load_config(write_config(tmp_path, tiny_gpt2_dir, batch_size="4"))
    records = quality.run_units(config, quality.plan_units(config, strategies))
    loaded = quality.decoders.load_model(tiny_gpt2_dir)
    prompt_ids = loaded.tokenizer([p for p, _ in PROMPTS])["input_ids"]
    rows = {
        name: [row for r in records if r["unit"]["strategy"] == name for row in r["rows"]] for name in ("human", "pure")
    }
    for record in records:
        assert record["featurizer"] == {"model": str(tiny_gpt2_dir), "pooling": "mean"}
    # each text's feature: the mean final hidden state of prompt + continuation (the generated ids)
    for own in rows.values():
        texts = [prompt_ids[row["prompt_index"]] + row["token_ids"] for row in own]
        expected = quality.metrics.text_features(loaded, texts, pooling="mean").numpy()
        assert quality.features_of(own) == pytest.approx(expected, rel=2e-3, abs=2e-3)  # stored as float16
    # the summary's MAUVE is metrics.mauve of those features, human continuations (P) against all seeds (Q)
    human, pure = quality.features_of(rows["human"]), quality.features_of(rows["pure"])
    assert len(human) == 4 and len(pure) == 8
    expected = quality.metrics.mauve(human, pure)
    summary = {row["strategy"]: row for row in quality.summarize(config, strategies, records)}
    assert summary["pure"]["mauve"] == pytest.approx(expected, abs=1e-12)
    data = quality.MetricData(rows["pure"], reference=rows["human"], mauve=config.mauve)
    assert data.value("mauve") == pytest.approx(expected, abs=1e-12)
    # its interval is the percentile bootstrap over prompts of the same statistic, with the sweep's draws
    statistic = data.statistic("mauve")
    assert list(summary["pure"]["ci95"]["mauve"]) == list(quality.metrics.bootstrap_interval(statistic, 4))
    # the human text against itself: the same histogram, MAUVE 1 in every resample
    itself = quality.MetricData(rows["human"], reference=rows["human"], mauve=config.mauve)
    assert itself.value("mauve") == pytest.approx(1.0) and itself.interval("mauve") == pytest.approx((1.0, 1.0))
    assert quality.MetricData(rows["pure"]).statistic("mauve") is None  # no reference, no MAUVE


def synthetic_rows(features, seeds=(None,)):
    """Rows of a record with the given MAUVE features (base64 float16), prompt ``i mod prompts``, each seed's rows
    in turn, and the same short text and tokens everywhere."""
    import base64

    import numpy as np

    prompts = len(features) // len(seeds)
    return [
        {"prompt_index": i % prompts, "seed": seeds[i // prompts], "text": "a b c d e", "token_ids": [1, 2, 3, 4, 5],
         "nll_sum": 5.0, "nll_count": 5, "mean_entropy": None, "coherence": None,
         "features": base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode()}
        for i, vector in enumerate(features)
    ]  # fmt: skip


def test_mauve_interval_resamples_prompts_and_separates_close_from_far_text(quality):
    """On synthetic features of 60 prompts: text drawn like the human text scores near 1, shifted text far lower,
    and the two intervals (resampling prompts, each with its human text and both seeds' texts) do not overlap."""
    import numpy as np

    rng = np.random.default_rng(0)
    human = synthetic_rows(rng.normal(size=(60, 8)))
    close = synthetic_rows(rng.normal(size=(120, 8)), seeds=(0, 1))
    far = synthetic_rows(rng.normal(size=(120, 8)) + np.eye(8)[0] * 2.5, seeds=(0, 1))
    settings = quality.MauveConfig()
    values = {}
    for name, rows in (("close", close), ("far", far)):
        data = quality.MetricData(rows, reference=human, mauve=settings)
        assert data.prompts == list(range(60))
        human_counts, model_counts = data.mauve_counts
        assert human_counts.sum() == 60 and model_counts.sum() == 120 and human_counts.shape[1] == 6  # 'auto': 60 / 10
        assert (model_counts.sum(axis=1) == 2).all()  # each prompt carries both seeds' texts
        values[name] = (data.value("mauve"), data.interval("mauve", resamples=500, seed=0))
    assert values["close"][0] > 0.8 and values["far"][0] < 0.4
    assert values["far"][1][1] < values["close"][1][0]
    for value, (low, high) in values.values():
        assert low <= value <= high


def test_mauve_features_are_taken_anew_for_old_units_and_another_featurizer(
    quality, tmp_path, tiny_gpt2_dir, monkeypatch
):
    path = write_config(tmp_path, tiny_gpt2_dir, seeds="[0]")

    def run():
        config, strategies = quality.load_config(path)
        return quality.run_units(config, quality.plan_units(config, strategies))

    first = run()
    folder = tmp_path / "out" / "tiny_units"
    # units written before MAUVE existed: no features in their files
    for unit_file in folder.rglob("*.json"):
        record = json.loads(unit_file.read_text())
        del record["featurizer"]
        for row in record["rows"]:
            del row["features"]
        unit_file.write_text(json.dumps(record))
    calls = []
    generate = quality.decoders.generate
    monkeypatch.setattr(quality.decoders, "generate", lambda *a, **k: calls.append(a) or generate(*a, **k))
    again = run()
    assert calls == []  # no text was generated again
    assert [r["unit"] for r in again] == [r["unit"] for r in first]
    for record, old in zip(again, first):
        assert [row["token_ids"] for row in record["rows"]] == [row["token_ids"] for row in old["rows"]]
        assert quality.features_of(record["rows"]) == pytest.approx(quality.features_of(old["rows"]), abs=2e-3)
    assert all("features" in row for f in folder.rglob("*.json") for row in json.loads(f.read_text())["rows"])
    # another pooling is another featurizer: the features change, the texts do not
    path.write_text(path.read_text().replace("[strategies]", '[mauve]\npooling = "last"\n\n[strategies]'))
    last = run()
    assert calls == []
    assert {json.dumps(r["featurizer"]) for r in last} == {json.dumps({"model": str(tiny_gpt2_dir), "pooling": "last"})}
    assert quality.features_of(last[0]["rows"]) != pytest.approx(quality.features_of(first[0]["rows"]), abs=1e-2)
    # features of another featurizer than the config's are never compared: MAUVE is left out until taken anew
    config, strategies = quality.load_config(path)
    mean = config.model_copy(update={"mauve": quality.MauveConfig(pooling="mean")})
    stale = quality.summarize(mean, strategies, last)
    assert all(row["mauve"] is None for row in stale)
    assert all(row["mauve"] is not None for row in quality.summarize(config, strategies, last)[1:])
    # disabled: no features are taken, and MAUVE is left out
    off = config.model_copy(update={"mauve": quality.MauveConfig(enabled=False)})
    unit = next(u for u in quality.plan_units(off, strategies) if u.strategy == "greedy")
    [record] = quality.run_call(off, [unit])
    assert "features" not in record["rows"][0] and "featurizer" not in record
    assert all(row["mauve"] is None for row in quality.summarize(off, strategies, last))
    # so too without the human continuations to compare with
    alone = config.model_copy(update={"human": False})
    [record] = quality.run_call(alone, [unit])
    assert "features" not in record["rows"][0] and not quality.measures_mauve(alone)


def test_mauve_with_another_featurizer_retokenizes_the_texts(quality, tmp_path, tiny_gpt2_dir, tiny_model_dir):
    path = write_config(tmp_path, tiny_gpt2_dir, seeds="[0]")
    table = f'[mauve]\nfeaturizer = "{tiny_model_dir}"\n\n[strategies]'
    path.write_text(path.read_text().replace("[strategies]", table))
    config, strategies = quality.load_config(path)
    unit = next(u for u in quality.plan_units(config, strategies) if u.strategy == "pure")
    [record] = quality.run_call(config, [unit])
    assert record["featurizer"] == {"model": str(tiny_model_dir), "pooling": "mean"}
    featurizer = quality.decoders.load_model(tiny_model_dir)
    texts = [
        featurizer.tokenizer(PROMPTS[row["prompt_index"]][0])["input_ids"]
        + featurizer.tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        for row in record["rows"]
    ]
    expected = quality.metrics.text_features(featurizer, texts, pooling="mean").numpy()
    assert quality.features_of(record["rows"]) == pytest.approx(expected, rel=2e-3, abs=2e-3)


def test_compare_includes_mauve_against_the_human_text(quality, tmp_path, tiny_gpt2_dir):
    path = write_config(tmp_path, tiny_gpt2_dir)
    config, strategies = quality.load_config(path)
    records = quality.run_units(config, quality.plan_units(config, strategies))
    result = quality.compare(config, strategies, records, "pure", "greedy")["metrics"]["mauve"]
    summary = {row["strategy"]: row for row in quality.summarize(config, strategies, records)}
    assert result["a"] == pytest.approx(summary["pure"]["mauve"])
    assert result["b"] == pytest.approx(summary["greedy"]["mauve"])
    low, high = result["ci95"]
    assert low <= high
    assert "mauve" not in quality.compare(config, strategies, records, "pure", "human")["metrics"]


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('{ pooling = "max" }', "mauve.pooling"),
        ("{ num_buckets = 1 }", "mauve.num_buckets"),
        ("{ kmeans_explained_var = 1.5 }", "mauve.kmeans_explained_var"),
        ("{ scaling = 5 }", "mauve.scaling"),
    ],
)
def test_bad_mauve_setting_names_the_key(quality, tmp_path, tiny_gpt2_dir, table, named):
    with pytest.raises(quality.ConfigError, match=rf"(?m)^  {re.escape(named)}\b"):
        quality.load_config(write_config(tmp_path, tiny_gpt2_dir, mauve=table))


# ---- the prompt sets ------------------------------------------------------------------------------------------


@pytest.mark.embedded
def test_botchan_prompts_hold_200_passages_of_128_smollm2_tokens():
    """The larger prompt set: at least 200 passages, the fields of the first set, every human continuation at
    least 128 tokens of the SmolLM2 tokenizer (as the sweep tokenizes it), no passage overlapping another, and a
    sidecar that names the source, the licence and the package version."""
    import decoders

    data = Path(__file__).parent.parent / "benchmarks" / "data"
    rows = [json.loads(line) for line in (data / "botchan_morri1919.jsonl").read_text(encoding="utf-8").splitlines()]
    first = json.loads((data / "britannica1911_shakespeare.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert len(rows) >= 200 and all(set(row) == set(first) for row in rows)
    assert [row["id"] for row in rows] == list(range(len(rows)))
    tokenizer = decoders.load_model(None).tokenizer
    lengths = [len(ids) for ids in tokenizer([r["continuation"] for r in rows], add_special_tokens=False)["input_ids"]]
    assert min(lengths) >= 128
    assert all(len(row["prompt"].split()) == 35 and row["continuation"].startswith(" ") for row in rows)
    passages = [row["prompt"] + row["continuation"] for row in rows]
    assert len(set(passages)) == len(rows)
    for before, after in itertools.pairwise(rows):  # in the novel's order, each after the previous one's end
        assert before["continuation"][-40:] not in after["prompt"] + after["continuation"]
    sidecar = json.loads((data / "botchan_morri1919.source.json").read_text(encoding="utf-8"))
    assert sidecar["passages"] == len(rows) and sidecar["package"] == "sentencepiece==0.2.3"
    assert "public domain" in sidecar["licence"].lower() and sidecar["continuation_tokens"]["min"] >= 128
