"""The quality sweep (benchmarks/quality.py) end to end on a tiny model: results, resume, config errors, Ray."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "quality.py"
REQUIRED = {"strategy", "perplexity", "self_bleu4", "zipf", "repetition_pct", "distinct_2", "mean_entropy"}
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
    human, greedy = rows[0], rows[1]
    assert human["mean_entropy"] is None and human["generations"] == 4
    assert greedy["generations"] == 8 and greedy["tokens"] == 8 * 8  # 4 prompts × 2 seeds × 8 tokens
    units = sorted((tmp_path / "out" / "tiny_units").rglob("seed*-batch000-*.json"))
    greedy_texts = [[r["text"] for r in json.loads(u.read_text())["rows"]] for u in units if u.parent.name == "greedy"]
    assert len(greedy_texts) == 2 and greedy_texts[0] == greedy_texts[1]  # greedy ignores the seed
    assert 0 < rows[4]["mean_entropy"] <= 1.61  # top-k 5: at most ln 5
    with (out / "tiny.csv").open() as handle:
        assert [r["strategy"] for r in csv.DictReader(handle)] == [r["strategy"] for r in rows]
    assert "| human |" in (out / "tiny.md").read_text()
    assert (out / "tiny_curves.png").stat().st_size > 0 and (out / "tiny_rank_frequency.png").stat().st_size > 0


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
    assert run() == first
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
    for ours, theirs in zip(records["local"], records["ray"]):
        assert theirs["unit"] == ours["unit"]
        assert [r["token_ids"] for r in theirs["rows"]] == [r["token_ids"] for r in ours["rows"]]
        assert [r["nll_sum"] for r in theirs["rows"]] == pytest.approx([r["nll_sum"] for r in ours["rows"]], rel=1e-6)
