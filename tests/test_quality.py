"""The quality sweep (benchmarks/quality.py) end to end on a tiny model: results, resume, config errors, Ray."""

import csv
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "quality.py"
REQUIRED = {
    "strategy", "perplexity", "self_bleu4", "zipf", "repetition_pct", "distinct_2", "mean_entropy", "rep_2", "rep_3",
    "rep_4", "diversity", "coherence", "ci95",
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
    with (out / "tiny.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["strategy"] for r in table] == [r["strategy"] for r in rows]
    assert float(table[2]["perplexity_lo"]) == pytest.approx(pure["ci95"]["perplexity"][0])
    markdown = (out / "tiny.md").read_text()
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
