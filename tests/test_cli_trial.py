"""What a second new-user trial of the command line found, each through ``decoders`` as a person runs it."""

import json
import os
import re
import subprocess
import sys

import pytest
from rich.console import Console

import decoders
import decoders.cli
from tests.test_cli import run, run_json

NO_MODEL = ("--model", "/no/such/folder")


@pytest.fixture
def terminal(monkeypatch):
    """Standard output as a terminal (wide, no colours)."""
    monkeypatch.setattr(decoders.cli, "console", Console(force_terminal=True, width=200, color_system=None))


# ---- 4. explain with a search that records no steps ----------------------------------------------------------


def test_explain_stochastic_beam_shows_its_hypotheses_with_weights_and_the_result(capsys, tiny_gpt2_dir):
    args = ("explain", "The cat", "--model", str(tiny_gpt2_dir), "--steps", "3", "--search", "stochastic_beam")
    data = run_json(capsys, *args)
    assert len(data["alternatives"]) == 4 and all(h["weight"] > 0 for h in data["alternatives"])
    assert data["alternatives"][0]["text"] == data["text"] and data["score"] == data["alternatives"][0]["score"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    after = out.split("8. Step by step", 1)[1]
    assert "records no steps" in after and "weight (p/q)" in after
    for hypothesis in data["alternatives"]:
        assert f"| {hypothesis['score']:.3f} | {hypothesis['weight']:.4g} | {hypothesis['text']!r} |" in after
    assert f"result {'The cat' + data['text']!r}" in after


# ---- 5. piped output: every hypothesis, labelled, one line each ----------------------------------------------


def test_piped_output_carries_every_hypothesis_labelled_one_line_each(capsys, tiny_gpt2_dir):
    prompts = ["Once upon", "The quick"]
    beams = ("--num-beams", "3", "--num-return-sequences", "2")
    code, out, _ = run(capsys, "generate", *prompts, "--model", str(tiny_gpt2_dir), "--max-new-tokens", "5", *beams)
    strategy = {"search": {"kind": "beam", "num_beams": 3, "num_return_sequences": 2}}
    expected = decoders.generate(prompts, strategy, model=decoders.load_model(tiny_gpt2_dir), max_new_tokens=5)
    labels = ["[0]", "[0.1]", "[1]", "[1.1]"]
    texts = [decoders.cli.visible(h.text) for r in expected for h in r.alternatives]
    assert code == 0 and out.splitlines() == [f"{label} {text}" for label, text in zip(labels, texts, strict=True)]


def test_piped_rows_escape_newlines_tabs_and_backslashes(capsys, tiny_gpt2_dir):
    tokenizer = decoders.load_model(tiny_gpt2_dir).tokenizer

    def writes(text: str) -> str:  # a strategy that writes only this character
        return json.dumps({"processors": [{"kind": "logit_bias", "logit_bias": {tokenizer.encode(text)[0]: 100}}]})

    args = ("generate", "a", "b", "c", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "2")
    for stream in ("--no-stream", "--stream"):
        code, out, _ = run(capsys, *args, "-s", writes("\n"), "-s", writes("\t"), "-s", writes("\\"), stream)
        assert code == 0 and out == "[0] \\n\\n\n[1] \\t\\t\n[2] \\\\\\\\\n"
    code, out, _ = run(capsys, *args[:2], *args[4:], "-s", writes("\n"))
    assert code == 0 and out == "\n\n\n"  # one prompt, one hypothesis: its text as it is


# ---- 6. several -s: a mixed batch, one strategy per prompt ----------------------------------------------------


def test_several_strategies_make_a_mixed_batch_one_per_prompt(capsys, tiny_gpt2_dir):
    prompts = ["Once upon", "The quick", "a"]
    specs = ["greedy", "balanced", "beam_search"]  # two searches: run as compare runs them, one call per search
    args = ("generate", *prompts, "--model", str(tiny_gpt2_dir), "--max-new-tokens", "5", "--seed", "3")
    data = run_json(capsys, *args, *[arg for spec in specs for arg in ("-s", spec)])
    assert [s["name"] for s in data["strategy"]] == specs
    loaded = decoders.load_model(tiny_gpt2_dir)
    for row, (prompt, spec) in enumerate(zip(prompts, specs)):
        alone = decoders.generate(prompt, spec, model=loaded, max_new_tokens=5, seed=3 + row)
        assert data["results"][row]["generated_ids"] == alone.generated_ids
    same_search = run_json(capsys, *args[:3], *args[4:], "-s", "greedy", "-s", "balanced")
    expected = decoders.generate(prompts[:2], ["greedy", "balanced"], model=loaded, max_new_tokens=5, seed=3)
    assert same_search["results"] == [r.model_dump(mode="json", exclude_none=True) for r in expected]
    code, out, err = run(capsys, *args[:3], *args[4:], "-s", "greedy", "-s", "balanced")
    assert code == 0 and out.startswith("[0] ") and "greedy | temperature(0.7)" in err


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        (["a", "b", "c"], "2 strategies (-s) for 3 prompts: give one -s for all the prompts, or one per prompt"),
        (["a"], ("2 strategies (-s) for 1 prompt: give one -s for all the prompts, or one per prompt, in order (to run "
                 "several strategies on one prompt: decoders compare)")),
    ],
)  # fmt: skip
def test_a_strategy_count_that_matches_no_prompt_count_is_refused_before_the_model_loads(capsys, prompts, message):
    code, out, err = run(capsys, "generate", *prompts, "-s", "greedy", "-s", "balanced", *NO_MODEL)
    assert code == 2 and out == "" and message in err and "/no/such/folder" not in err


def test_streaming_a_mixed_batch_needs_strategies_that_share_a_batch(capsys):
    code, _, err = run(capsys, "generate", "a", "b", "-s", "greedy", "-s", "contrastive", "--stream", *NO_MODEL)
    assert code == 2 and "--stream runs the prompts as one batch" in err and "/no/such/folder" not in err


# ---- 7. no option silently ignored ----------------------------------------------------------------------------


def test_diversity_penalty_without_beam_groups_is_refused(capsys):
    code, _, err = run(capsys, "generate", "a", "--num-beams", "4", "--diversity-penalty", "1.0", *NO_MODEL)
    assert code == 2 and "--diversity-penalty acts between groups of beams" in err and "--num-beam-groups" in err


def test_logprobs_without_json_are_a_table_on_a_terminal_and_a_note_when_piped(capsys, tiny_gpt2_dir, monkeypatch):
    args = ("generate", "Once upon", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "3", "--logprobs", "2")
    code, out, err = run(capsys, *args)
    assert code == 0 and "note: --logprobs: the log-probabilities are in the --json output" in err
    assert "log-probabilities" not in out  # the piped layout holds the texts only
    monkeypatch.setattr(decoders.cli, "console", Console(force_terminal=True, width=200, color_system=None))
    code, out, _ = run(capsys, *args)
    result = decoders.generate("Once upon", model=decoders.load_model(tiny_gpt2_dir), max_new_tokens=3, logprobs=2)
    assert code == 0 and "log-probabilities of prompt 0's text" in out
    for step in result.logprobs:
        assert f"{step.chosen.token!r}" in out and f"{step.chosen.raw:.3f}" in out


def test_stream_with_json_prints_json_lines_one_per_step_then_the_document(capsys, tiny_gpt2_dir):
    args = ("generate", "Once upon", "The quick", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "4")
    code, out, _ = run(capsys, *args, "--json", "--stream")
    assert code == 0
    *steps, final = [json.loads(line) for line in out.splitlines()]
    assert [step["step"] for step in steps] == list(range(len(steps))) and steps[-1]["finished"] == [True, True]
    assert final == run_json(capsys, *args)  # the --json document, on one line
    for row, result in enumerate(final["results"]):
        assert "".join(step["texts"][row] for step in steps) == result["text"]


def test_replacing_a_presets_search_is_said_on_stderr(capsys, tiny_gpt2_dir):
    args = ("generate", "a", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "2", "--json")
    code, out, err = run(capsys, *args, "-s", "beam_search", "--search", "contrastive")
    assert code == 0 and "note: --search contrastive replaces the 'beam' search of 'beam_search'" in err
    assert json.loads(out)["strategy"]["search"]["kind"] == "contrastive"
    code, _, err = run(capsys, *args, "-s", "beam_search", "--num-beams", "2")  # the same search, a setting changed
    assert code == 0 and "note:" not in err


# ---- 8. --json names the selector that ran ---------------------------------------------------------------------


@pytest.mark.parametrize("search", ["best_of", "stochastic_beam"])
def test_json_names_the_selector_a_sampling_search_ran(capsys, tiny_gpt2_dir, search):
    args = ("generate", "a", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "3", "--search", search, "--seed", "1")
    data = run_json(capsys, *args)
    strategy = data["strategy"]
    assert strategy["selector"] == {"kind": "sample"} and "greedy" not in json.dumps(strategy)  # not the greedy preset
    rerun = decoders.generate("a", strategy, model=decoders.load_model(tiny_gpt2_dir), max_new_tokens=3, seed=1)
    assert data["results"][0] == rerun[0].model_dump(mode="json", exclude_none=True)


# ---- 9. help and tables fit the terminal ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["generate", "explain", "compare", "plugins", "schema", "cache"])
def test_help_fits_80_columns(capsys, monkeypatch, name):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(capsys, name, "--help")
    assert code == 0 and max(map(len, out.splitlines())) <= 80


def test_piped_compare_is_a_markdown_table_with_whole_cells(capsys, tiny_gpt2_dir):
    args = ("compare", "The quick", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "30")
    data = run_json(capsys, *args)
    code, out, _ = run(capsys, *args)
    lines = out.splitlines()
    assert code == 0 and lines[1] == "| strategy | chain | continuation |" and lines[2] == "|---|---|---|"
    rows = lines[3:]
    assert len(rows) == len(data["results"])
    for line, result in zip(rows, data["results"]):
        text = decoders.cli.visible(result["text"]).replace("|", "\\|")
        assert line == f"| {result['strategy']} | {result['chain']} | {text} |"


# ---- 10. errors before the model loads, in the CLI's words; Ctrl-C ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("generate", "a", "--search", "beam", "--n", "3"), "--n does not apply to the 'beam' search: it takes --num-beams"),
        (("generate", "a", "--search", "beam", "--n", "3", "--rank-by", "mean"), "--n and --rank-by do not apply"),
        (("generate", "a", "-s", "beam_search", "--penalty-alpha", "0.5"), "--penalty-alpha does not apply to the 'beam'"),
        (("generate", "a", "--search", "dola", "--num-beams", "2"), "it takes no search flags"),
        (("generate", "a", "-s", "greedy", "--search", "best_of"), "use the 'sample' selector"),
        (("generate", "a", "--search", "beam", "--stream"), "--stream: the 'beam' search cannot stream"),
        (("generate", "a", "--search", "beam", "--stop", "."), "--stop: the 'beam' search does not take stop strings"),
        (("generate", "a", "--max-new-tokens", "-1"), "max_new_tokens"),
        (("generate", "a", "--seed", "-1"), "--seed must be from 0"),
        (("generate", ""), "the prompt is empty"),
        (("compare", "a", "-s", "greedy", "-s", "nope.json"), "nope.json' does not exist"),
        (("explain", "a", "--strategy", "nope.toml"), "nope.toml' does not exist"),
        (("explain", "a", "--temperature", "0"), "--temperature 0"),
        (("explain", "a", "--search", "beam", "--num-beams", "0"), "num_beams"),
    ],
)  # fmt: skip
def test_errors_that_need_no_model_come_before_it_loads(capsys, args, message):
    code, out, err = run(capsys, *args, *NO_MODEL)
    assert code == 2 and out == "" and message in err, err
    assert "/no/such/folder" not in err and "Extra inputs" not in err and "Traceback" not in err


def test_ctrl_c_while_the_model_loads_exits_130_with_one_line(tmp_path):
    script = (
        "import os, signal, sys, time\n"
        "import decoders.models\n"
        "def load_model(name=None, **kwargs):  # Ctrl-C while the model loads\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
        "decoders.models.load_model = load_model\n"
        "from decoders.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "generate", "Once upon a time"], capture_output=True, text=True, timeout=120,
        check=False, env={**os.environ, "DECODERS_DISABLE_PLUGINS": "1"},
    )  # fmt: skip
    assert result.returncode == 130 and result.stdout == ""
    assert result.stderr.splitlines() == ["interrupted"] and "Traceback" not in result.stderr


def test_the_piped_layout_is_documented_in_the_help(capsys):
    code, out, _ = run(capsys, "generate", "--help")
    assert code == 0 and re.search(r"\[0\.1\] its next hypothesis", out) and "JSON Lines" in out
