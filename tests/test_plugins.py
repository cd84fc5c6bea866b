"""Plugins: a real package installed with pip, found through its entry points, validated, built and run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import decoders
from decoders.plugins import PluginWarning, build_registry

PLUGIN_PACKAGE = Path(__file__).parent / "plugin_package"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """Install the throw-away plugin package into a folder on sys.path (entry points are found there)."""
    source = shutil.copytree(PLUGIN_PACKAGE, tmp_path_factory.mktemp("src") / "plugin_package")
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(target))
    try:
        with pytest.warns(PluginWarning):
            decoders.reload_registry()
        yield target
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m.startswith("decoders_test_plugin")]:
            del sys.modules[name]
        decoders.reload_registry()


def test_plugin_processor_validates_builds_and_runs(installed_plugin):
    strategy = decoders.Strategy.model_validate(
        {"processors": [{"kind": "test_boost", "token_id": 2, "amount": 100.0}], "selector": {"kind": "greedy"}}
    )
    chain = strategy.build()
    logits = torch.zeros(3, 5)
    assert chain.select(torch.zeros(3, 1, dtype=torch.long), logits).tolist() == [2, 2, 2]
    assert logits.abs().sum() == 0  # input untouched
    # round trip through a file, like a user's strategy file
    assert decoders.Strategy.model_validate_json(strategy.model_dump_json()) == strategy


def test_plugin_selector_and_validation_errors(installed_plugin):
    strategy = decoders.Strategy.model_validate({"processors": [{"kind": "top_k", "top_k": 2}], "selector": {"kind": "test_lowest"}})
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]])
    assert strategy.build().select(torch.zeros(1, 0, dtype=torch.long), logits).tolist() == [1]
    with pytest.raises(ValueError, match=r"processors\.0\.test_boost\.amount"):
        decoders.Strategy.model_validate({"processors": [{"kind": "test_boost", "token_id": 1, "amount": -1}]})


def test_plugin_kinds_in_schema(installed_plugin):
    schema = json.dumps(decoders.Strategy.json_schema())
    assert "test_boost" in schema and "test_lowest" in schema


def test_broken_and_clashing_plugins_are_reported_by_name_and_others_load(installed_plugin):
    with pytest.warns(PluginWarning) as caught:
        registry = build_registry()
    messages = [str(w.message) for w in caught]
    assert any("test_broken" in m and "failed to load" in m for m in messages)
    clash = [m for m in messages if "'top_k'" in m]
    assert clash and "decoders (built-in)" in clash[0] and "test_clash" in clash[0]
    assert registry.processors["top_k"].plugin == "decoders (built-in)"
    assert registry.processors["test_boost"].plugin == "test_good"


def test_a_misspelled_hook_is_reported_and_its_plugin_skipped(installed_plugin):
    with pytest.warns(PluginWarning) as caught:
        registry = build_registry()
    [problem] = [str(w.message) for w in caught if "test_misspelled" in str(w.message)]
    assert "decoders_register_processor" in problem and "decoders_register_processors" in problem  # the spelling to use
    assert "test_unseen" not in registry.processors
    assert "test_misspelled" not in [p.name for p in registry.plugins]


def test_plugins_add_presets_and_generation_config_fields(installed_plugin):
    import warnings

    boosted = decoders.Strategy.from_preset("test_boosted")
    assert boosted.description == "always token 2 (test plugin)" and boosted.processors[0].kind == "test_boost"
    assert decoders.Strategy.resolve("test_boosted") == boosted
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plugin's field is used, so nothing is reported as ignored
        converted = decoders.Strategy.from_generation_config({"repetition_penalty": 1.2, "test_boost_token": 3})
    assert [(p.kind, getattr(p, "token_id", None)) for p in converted.processors] == [
        ("repetition_penalty", None), ("test_boost", 3)
    ]


def test_environment_switch_disables_autoloading(installed_plugin, monkeypatch):
    monkeypatch.setenv("DECODERS_DISABLE_PLUGINS", "1")
    registry = build_registry()
    assert "test_boost" not in registry.processors and not registry.problems


def test_cli_lists_plugin_kinds_with_their_plugin(installed_plugin):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_plugin), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(["decoders", "plugins", "--json"], capture_output=True, text=True, env=env, check=True)
    listing = json.loads(result.stdout)
    by_kind = {row["kind"]: row for row in listing["kinds"]}
    assert by_kind["test_boost"]["plugin"] == "test_good" and by_kind["test_boost"]["role"] == "processor"
    assert by_kind["test_lowest"]["role"] == "selector"
    assert by_kind["temperature"]["plugin"] == "decoders (built-in)"
    assert by_kind["test_boosted"] == {
        "kind": "test_boosted", "role": "preset", "plugin": "test_good", "description": "always token 2 (test plugin)"
    }  # fmt: skip
    assert {"name": "test_good", "distribution": "decoders-test-plugin", "version": "0.0.1"} in listing["plugins"]
    assert any("test_broken" in p for p in listing["problems"])
    for command in (["plugins"], ["schema"]):  # every command reports each problem once, as one clean line
        result = subprocess.run(["decoders", *command], capture_output=True, text=True, env=env, check=True)
        problems = [line for line in result.stderr.splitlines() if "test_broken" in line]
        assert len(problems) == 1 and problems[0].startswith("warning: plugin 'test_broken'")
        assert "warnings.warn" not in result.stderr and "PluginWarning" not in result.stderr


def test_plugin_registered_in_code_and_a_non_config_registration_is_reported():
    class NotAConfig:
        pass

    class Plugin:
        @staticmethod
        @decoders.hookimpl
        def decoders_register_processors(register):
            register(NotAConfig)

    with pytest.warns(PluginWarning, match="not a subclass of decoders.ProcessorConfig"):
        registry = decoders.register_plugin(Plugin(), "in_code")
    try:
        assert "in_code" in [plugin.name for plugin in registry.plugins]
    finally:
        decoders.unregister_plugin("in_code")


def test_schema_command_writes_valid_json(tmp_path):
    out = tmp_path / "schema.json"
    subprocess.run(["decoders", "schema", "--output", str(out)], check=True, capture_output=True)
    schema = json.loads(out.read_text())
    kinds = json.dumps(schema)
    for kind in ("temperature", "top_k", "top_p", "min_p", "typical_p", "greedy", "sample"):
        assert f'"{kind}"' in kinds


def test_the_search_example_of_the_plugin_guide_runs(tiny_gpt2_dir):
    """plugins/README.md's search example, executed as written, registered and run like any plugin."""
    guide = (Path(__file__).parent.parent / "plugins" / "README.md").read_text()
    example = next(block for block in guide.split("```python\n") if "class FirstSampled" in block).split("```")[0]
    namespace: dict = {}
    exec(compile(example, "plugins/README.md", "exec"), namespace)

    class Plugin:
        @decoders.hookimpl
        def decoders_register_searches(self, register):
            register(namespace["FirstSampledConfig"])

    decoders.register_plugin(Plugin(), "first-sampled-example")
    try:
        assert decoders.get_registry().searches["first_sampled"].plugin == "first-sampled-example"
        model = decoders.load_model(tiny_gpt2_dir)
        prompts = ["Once upon a time", "The"]
        sampled = {"search": {"kind": "first_sampled"}}
        runs = [decoders.generate(prompts, sampled, model=model, max_new_tokens=8, seed=s) for s in range(4)]
        assert runs[0] == decoders.generate(prompts, sampled, model=model, max_new_tokens=8, seed=0)
        assert len({r[0].generated_ids[0] for r in runs}) > 1  # the first token is drawn
        top_1 = {**sampled, "processors": [{"kind": "top_k", "top_k": 1}]}  # nothing left to draw: greedy
        greedy = decoders.generate(prompts, model=model, max_new_tokens=8)
        assert [r.generated_ids for r in decoders.generate(prompts, top_1, model=model, max_new_tokens=8, seed=0)] == [
            r.generated_ids for r in greedy
        ]
    finally:
        decoders.unregister_plugin("first-sampled-example")


def test_registering_an_object_pluggy_cannot_hold_is_a_clear_error():
    import types

    with pytest.raises(decoders.PluginError, match="plugin 'bag' is a SimpleNamespace, which pluggy cannot register"):
        decoders.register_plugin(types.SimpleNamespace(), "bag")
    assert "top_k" in decoders.reload_registry().processors  # nothing was left half-registered
