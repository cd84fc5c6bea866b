"""The plugin's options of ``decoders generate`` (--json-schema, --regex, --grammar), used as a person would."""

import json
import re
import types

import jsonschema
import lark
import pytest

import decoders
from decoders.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``decoders ARGS`` in-process; return (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "ok": {"type": "boolean"}},
          "required": ["n", "ok"], "additionalProperties": False}  # fmt: skip


def test_the_options_come_from_the_plugin(capsys):
    code, out, _ = run(capsys, "generate", "--help")
    assert code == 0 and all(flag in out for flag in ("--json-schema", "--regex", "--grammar"))
    registry = decoders.reload_registry()
    assert {o.flag: o.plugin for o in registry.generate_options} == {"--json-schema": "structured", "--regex": "structured", "--grammar": "structured"}


@pytest.mark.parametrize("inline", [False, True])
def test_json_schema_from_a_file_or_inline(capsys, tiny_model_dir, tmp_path, inline):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    value = json.dumps(SCHEMA) if inline else str(path)
    code, out, err = run(capsys, "generate", "The", "--model", str(tiny_model_dir), "--json-schema", value, "--max-new-tokens", "30", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["strategy"]["processors"] == [{"kind": "json_schema", "json_schema": SCHEMA, "whitespace_flexible": False,
                                               "item_separator": ",", "key_separator": ":", "coerce_one_of": False,
                                               "lenient": False}]  # fmt: skip
    [result] = data["results"]
    assert result["finish_reason"] == "eos"
    jsonschema.validate(json.loads(result["text"]), SCHEMA)


def test_regex_with_sampling_flags(capsys, tiny_model_dir):
    regex = r"[a-f]{3}-[0-9]{2}"
    code, out, err = run(capsys, "generate", "Once", "a", "--model", str(tiny_model_dir), "--regex", regex, "--temperature", "1.2",
                         "--top-k", "5", "--seed", "2", "--json")  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert [p["kind"] for p in data["strategy"]["processors"]] == ["temperature", "top_k", "regex"]
    for result in data["results"]:
        assert result["finish_reason"] == "eos" and re.fullmatch(regex, result["text"])


def test_grammar_file_streams_text(capsys, tiny_model_dir, tmp_path):
    grammar = 'start: "(" item ("," item)* ")"\nitem: /[0-9]/ | "x"\n'
    path = tmp_path / "tuple.lark"
    path.write_text(grammar)
    code, out, err = run(capsys, "generate", "The", "--model", str(tiny_model_dir), "--grammar", str(path), "--max-new-tokens", "40")
    assert code == 0, err
    text = out.rstrip("\n")
    if "eos" in err:
        lark.Lark(grammar).parse(text)
    else:  # cut by --max-new-tokens: a prefix of a sentence
        assert "length" in err and text.startswith("(")


@pytest.mark.parametrize(
    "args, message",
    [
        (("--regex", "ab(c"), r"--regex: invalid regex 'ab\(c': unclosed group at character 3"),
        (("--json-schema", '{"type": "object", "properties": {"a": {"type": "strin"}}}'), r"--json-schema: invalid JSON Schema at /properties/a/type"),
        (("--json-schema", '{"properties": {"a": {"type": "string", "format": "uri-reference"}}}'),
         r"--json-schema: unsupported format 'uri-reference' at /properties/a/format: .*set lenient=true"),
        (("--json-schema", '{"type": "object",}'), r"--json-schema: the JSON Schema is not valid JSON: .* at line 1, column 19"),
        (("--json-schema", "missing.json"), r"--json-schema: JSON Schema file 'missing.json' does not exist"),
        (("--grammar", "missing.lark"), r"--grammar: grammar file 'missing.lark' does not exist"),
    ],
)  # fmt: skip
def test_bad_values_are_one_clear_line_before_loading_a_model(capsys, args, message):
    code, out, err = run(capsys, "generate", "x", "--model", "no/such-model-is-loaded", *args)
    assert code == 2 and out == ""
    assert re.search(message, err) and "loading" not in err and "Traceback" not in err


def test_an_option_generate_already_has_is_refused(capsys):
    clashing = types.ModuleType("clashing")
    clashing.decoders_register_generate_options = decoders.hookimpl(lambda register: register("--seed", lambda v: [], help="x"))
    try:
        decoders.register_plugin(clashing, "clashing")
        code, out, err = run(capsys, "generate", "--help")
    finally:
        decoders.unregister_plugin("clashing")
    assert code == 0 and "plugin 'clashing' adds --seed to generate, which already has it; it is skipped" in err


def test_the_benchmark_runs(tmp_path, tiny_model_dir):
    """A smoke run of benchmarks/structured.py at tiny sizes (no timing is asserted)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "structured.py"
    output = tmp_path / "structured.json"
    subprocess.run([sys.executable, str(script), "--quick", "--model", str(tiny_model_dir), "--output", str(output)],
                   check=True, capture_output=True)  # fmt: skip
    report = json.loads(output.read_text())
    assert set(report["compile"]) == {"tokenizer_ms", "json_schema_ms", "regex_ms", "grammar_ms", "cached_reset_ms"}
    assert report["mask"]["vocabulary"] == 384 and report["per_token"]["tokens"] > 0
    assert len(report["per_token"]["ratios"]) == 2
    assert report["constraint_share"]["ratio"] > 1 and report["constraint_share"]["constraint_ms_per_token"] > 0


def test_generate_options_that_are_malformed_or_taken_are_reported():
    def plugin(name, flag):
        module = types.ModuleType(name)
        module.decoders_register_generate_options = decoders.hookimpl(lambda register: register(flag, lambda v: []))
        return module

    with pytest.warns(decoders.plugins.PluginWarning):
        try:
            decoders.register_plugin(plugin("second_regex", "--regex"), "second_regex")
            registry = decoders.register_plugin(plugin("no_dashes", "Regex"), "no_dashes")
        finally:
            decoders.unregister_plugin("second_regex")
            decoders.unregister_plugin("no_dashes")
    assert "generate option --regex is registered by both plugin 'structured' and plugin 'second_regex'; 'structured' keeps it" in registry.problems
    assert any("plugin 'no_dashes' registered the generate option 'Regex'" in p for p in registry.problems)
    assert [o.plugin for o in registry.generate_options] == ["structured"] * 3
