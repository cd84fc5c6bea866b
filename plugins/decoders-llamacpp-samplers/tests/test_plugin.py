"""The plugin as a user meets it: discovered through its entry point, validated, in the schema and the CLI,
run by decoders.generate on a tiny random model, and clear about bad input."""

import json
import subprocess

import pytest
import torch
from decoders_llamacpp import SequenceBreakerError
from pydantic import ValidationError

import decoders

KINDS = {
    "xtc": {"kind": "xtc", "xtc_threshold": 0.05, "xtc_probability": 1.0},
    "dry": {"kind": "dry", "dry_multiplier": 0.8, "dry_allowed_length": 1},
    "dynatemp": {"kind": "dynatemp", "temperature": 1.0, "dynatemp_range": 0.5},
    "mirostat": {"kind": "mirostat", "mirostat_tau": 3.0, "mirostat_eta": 0.2},
}
PROMPTS = ["Once upon a time", "The quick brown fox"]


def strategy(kind, top_k=True):
    processors = ([{"kind": "top_k", "top_k": 40}] if top_k else []) + [KINDS[kind]]
    return {"processors": processors, "selector": {"kind": "sample"}}


def test_registered_by_the_llamacpp_plugin():
    registry = decoders.get_registry()
    for kind in KINDS:
        assert registry.processors[kind].plugin == "llamacpp"
    assert not [p for p in registry.problems if "llamacpp" in p]


def test_cli_lists_the_four_kinds():
    result = subprocess.run(["decoders", "plugins", "--json"], capture_output=True, text=True, check=True)
    listing = {row["kind"]: row for row in json.loads(result.stdout)["kinds"]}
    for kind in KINDS:
        assert listing[kind]["plugin"] == "llamacpp" and listing[kind]["role"] == "processor"
        assert listing[kind]["description"]


def test_kinds_validate_round_trip_and_appear_in_the_schema(tmp_path):
    s = decoders.Strategy.model_validate({"processors": list(KINDS.values()), "selector": {"kind": "sample"}})
    path = s.save(tmp_path / "s.toml")
    assert decoders.Strategy.load(path) == s
    assert decoders.Strategy.model_validate_json(s.model_dump_json()) == s
    defaults = decoders.Strategy.model_validate({"processors": [{"kind": "dry", "dry_multiplier": 0.8}]}).processors[0]
    assert defaults.dry_sequence_breakers == ["\n", ":", '"', "*"]
    assert (defaults.dry_base, defaults.dry_allowed_length, defaults.dry_penalty_last_n) == (1.75, 2, None)
    schema = json.dumps(decoders.Strategy.json_schema())
    for field in ("xtc_threshold", "dry_sequence_breakers", "dynatemp_exponent", "mirostat_tau"):
        assert field in schema


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("top_k", [True, False], ids=["candidates", "dense"])
def test_generate_with_each_kind_is_reproducible(tiny_model, kind, top_k):
    runs = [
        decoders.generate(PROMPTS, strategy=strategy(kind, top_k), model=tiny_model, max_new_tokens=12, seed=3)
        for _ in range(2)
    ]
    assert [r.generated_ids for r in runs[0]] == [r.generated_ids for r in runs[1]]
    assert all(len(r.generated_ids) >= 1 for r in runs[0])


@pytest.mark.parametrize("kind", ["xtc", "mirostat"])
def test_a_rows_tokens_do_not_depend_on_the_rest_of_the_batch(tiny_model, kind):
    batch = decoders.generate([PROMPTS[0]] * 2, strategy=strategy(kind), model=tiny_model, max_new_tokens=12, seed=[5, 9])
    alone = decoders.generate([PROMPTS[0]], strategy=strategy(kind), model=tiny_model, max_new_tokens=12, seed=[9])
    assert batch[1].generated_ids == alone[0].generated_ids


def test_the_samplers_change_what_is_generated(tiny_model):
    """Against the same chain without them (same seed): each kind changes some token on the tiny model."""
    base = decoders.generate(PROMPTS, strategy={"processors": [{"kind": "top_k", "top_k": 40}], "selector": {"kind": "sample"}},
                             model=tiny_model, max_new_tokens=16, seed=3)  # fmt: skip
    for kind in KINDS:
        out = decoders.generate(PROMPTS, strategy=strategy(kind), model=tiny_model, max_new_tokens=16, seed=3)
        assert [r.generated_ids for r in out] != [r.generated_ids for r in base], kind


def test_dry_stops_a_greedy_loop(tiny_model):
    """Greedy decoding of the tiny model repeats itself; a strong DRY penalty breaks every repeat of 3+ tokens."""
    greedy = decoders.generate(PROMPTS[0], model=tiny_model, max_new_tokens=30)[0].generated_ids
    dry = {"processors": [{"kind": "dry", "dry_multiplier": 1000.0, "dry_allowed_length": 2, "dry_sequence_breakers": []}]}
    out = decoders.generate(PROMPTS[0], strategy=dry, model=tiny_model, max_new_tokens=30)[0]
    ids = out.prompt_ids + out.generated_ids

    def has_repeat(seq, n):
        grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
        return len(grams) != len(set(grams))

    assert has_repeat(greedy, 3)  # the loop is there without DRY
    assert not has_repeat(ids[len(out.prompt_ids) - 2 :], 3)


def test_cli_generate_with_a_strategy_file(tiny_model_dir, tmp_path):
    """The command line gives the tokens decoders.generate gives from Python (same strategy file, same seed)."""
    path = tmp_path / "llamacpp.json"
    path.write_text(json.dumps({"processors": [{"kind": "top_k", "top_k": 40}, *KINDS.values()], "selector": {"kind": "sample"}}))
    command = ["decoders", "generate", "Once upon a time", "--model", str(tiny_model_dir), "--strategy", str(path),
               "--max-new-tokens", "8", "--seed", "1", "--json"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    expected = decoders.generate("Once upon a time", strategy=path, model=str(tiny_model_dir), max_new_tokens=8, seed=1)
    [record] = json.loads(result.stdout)["results"]
    assert record["generated_ids"] == expected[0].generated_ids


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "processor, field",
    [
        ({"kind": "xtc", "xtc_threshold": 0.7, "xtc_probability": 0.5}, "xtc_threshold"),
        ({"kind": "xtc", "xtc_threshold": 0.1, "xtc_probability": 0}, "xtc_probability"),
        ({"kind": "xtc", "xtc_threshold": 0.1, "xtc_probability": 1.5}, "xtc_probability"),
        ({"kind": "xtc", "xtc_threshold": 0.1, "xtc_probability": 1, "min_tokens_to_keep": 0}, "min_tokens_to_keep"),
        ({"kind": "dry", "dry_multiplier": -1}, "dry_multiplier"),
        ({"kind": "dry", "dry_multiplier": 1, "dry_base": 0.5}, "dry_base"),
        ({"kind": "dry", "dry_multiplier": 1, "dry_allowed_length": 0}, "dry_allowed_length"),
        ({"kind": "dry", "dry_multiplier": 1, "dry_penalty_last_n": -1}, "dry_penalty_last_n"),
        ({"kind": "dry", "dry_multiplier": 1, "dry_sequence_breakers": [""]}, "dry_sequence_breakers"),
        ({"kind": "dynatemp", "temperature": 0}, "temperature"),
        ({"kind": "dynatemp", "temperature": 1, "dynatemp_range": -0.5}, "dynatemp_range"),
        ({"kind": "dynatemp", "temperature": 1, "dynatemp_exponent": 0}, "dynatemp_exponent"),
        ({"kind": "mirostat", "mirostat_tau": 0}, "mirostat_tau"),
        ({"kind": "mirostat", "mirostat_eta": -0.1}, "mirostat_eta"),
        ({"kind": "mirostat", "mirostat_tau": 5, "mu": 3}, "mu"),  # extra fields are refused
    ],
)
def test_out_of_range_parameters_name_the_field(processor, field):
    with pytest.raises(ValidationError, match=rf"processors\.0\.{processor['kind']}\.{field}"):
        decoders.Strategy.model_validate({"processors": [processor]})


def test_processors_built_in_python_check_their_arguments():
    from decoders_llamacpp import DRY, XTC, DynamicTemperature, MirostatV2

    for make, field in [(lambda: XTC(0.6, 1.0), "xtc_threshold"), (lambda: DRY(0.0), "dry_multiplier"),
                        (lambda: DynamicTemperature(1.0, -1.0), "dynatemp_range"),
                        (lambda: MirostatV2(5.0, 0.0), "mirostat_eta")]:  # fmt: skip
        with pytest.raises(ValueError, match=field):
            make()


def test_a_breaker_that_tokenizes_to_nothing_is_reported(toy_tokenizer):
    chain = decoders.Strategy.model_validate(
        {"processors": [{"kind": "dry", "dry_multiplier": 1, "dry_sequence_breakers": ["\n", "§"]}]}
    ).build()
    with pytest.raises(SequenceBreakerError, match="'§' tokenizes to no tokens"):
        chain.reset(decoders.DecodeContext(tokenizer=toy_tokenizer))


def test_dry_without_a_tokenizer_says_it_needs_one():
    chain = decoders.Strategy.model_validate({"processors": [{"kind": "dry", "dry_multiplier": 1}]}).build()
    with pytest.raises(SequenceBreakerError, match="needs a model's tokenizer"):
        chain.reset(decoders.DecodeContext())
    # without breakers no tokenizer is needed
    chain = decoders.Strategy.model_validate(
        {"processors": [{"kind": "dry", "dry_multiplier": 1, "dry_sequence_breakers": []}]}
    ).build()
    chain.reset()
    assert chain.process(torch.tensor([[0, 1, 2, 0, 1]]), torch.zeros(1, 4)).tolist() == [[0.0, 0.0, -1.0, 0.0]]


def test_cli_reports_a_bad_parameter_in_one_line(tiny_model_dir, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"processors": [{"kind": "xtc", "xtc_threshold": 0.9, "xtc_probability": 0.5}]}))
    result = subprocess.run(
        ["decoders", "generate", "hi", "--model", str(tiny_model_dir), "--strategy", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "xtc_threshold" in result.stderr and "Traceback" not in result.stderr


def test_mirostat_follows_a_reorder_of_rows():
    """Under beam search a row continues another row's history; mirostat's μ must go with it."""
    from decoders_llamacpp import MirostatV2

    mirostat = MirostatV2(3.0, 0.5)
    mirostat.reset(decoders.DecodeContext(generators=[torch.Generator() for _ in range(2)]))
    logits = torch.tensor([[4.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    mirostat.process(None, logits)
    mirostat.accept(torch.tensor([0, 3]))
    before = mirostat.mu
    assert before[0] != before[1]
    mirostat.process(None, logits)
    mirostat.reorder(torch.tensor([1, 1, 0]))
    assert mirostat.mu.tolist() == [before[1], before[1], before[0]]
    mirostat.accept(torch.tensor([0, 1, 0]))  # scored under each new row's parent distribution
    assert mirostat.mu.shape == (3,)


@pytest.mark.parametrize(
    "selector, search",
    [
        ("sample", {"kind": "beam", "num_beams": 3, "num_return_sequences": 2}),
        ("sample", {"kind": "best_of", "n": 3}),
        ("sample", {"kind": "stochastic_beam", "num_beams": 3}),
        ("greedy", {"kind": "contrastive", "top_k": 3}),
    ],
    ids=["beam_sampling", "best_of", "stochastic_beam", "contrastive"],
)
def test_stateful_kinds_run_under_every_search(tiny_model, selector, search):
    """Mirostat keeps μ per row: the searches that fork rows reorder it, and every search runs it reproducibly."""
    strategy = {
        "processors": [{"kind": "mirostat", "mirostat_tau": 3.0}, {"kind": "dry", "dry_multiplier": 0.8}],
        "selector": {"kind": selector},
        "search": search,
    }
    first = decoders.generate(["Once upon", "The"], strategy, model=tiny_model, max_new_tokens=8, seed=4)
    again = decoders.generate(["Once upon", "The"], strategy, model=tiny_model, max_new_tokens=8, seed=4)
    assert [[h.generated_ids for h in r.alternatives] for r in first] == [[h.generated_ids for h in r.alternatives] for r in again]
    assert all(len(r.generated_ids) >= 1 for r in first)


def test_the_plugin_adds_a_preset_and_reads_its_generation_config_fields(tiny_model):
    import warnings

    creative = decoders.Strategy.from_preset("llama_cpp_creative")
    assert [p.kind for p in creative.processors] == ["dry", "min_p", "xtc"] and creative.description
    assert decoders.generate("Once upon", "llama_cpp_creative", model=tiny_model, max_new_tokens=4, seed=0).generated_ids
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=True, top_k=40, xtc_threshold=0.1, xtc_probability=0.5, dry_multiplier=0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every field is understood: nothing reported as ignored
        converted = decoders.Strategy.from_generation_config(config)
    assert [p.kind for p in converted.processors] == ["top_k", "dry", "xtc"]
    assert converted.processors[2].xtc_probability == 0.5
