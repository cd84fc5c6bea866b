"""Strategies as data: presets, files, schema, and transformers' GenerationConfig."""

import json

import pytest
import torch
from transformers import GenerationConfig

import decoders
from decoders import Strategy, StrategyError
from decoders import PRESETS
from decoders.strategy import COMPARE_PRESETS


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_and_selects(name):
    chain = Strategy.from_preset(name).build()
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    tokens = chain.select(torch.zeros(3, 2, dtype=torch.long), torch.randn(3, 100), generators)
    assert tokens.shape == (3,) and tokens.dtype == torch.long


def test_tutorial_presets_have_the_tutorial_parameters():
    assert COMPARE_PRESETS[:6] == ("greedy", "low_temperature", "high_temperature", "top_k", "top_p", "balanced")
    assert Strategy.from_preset("low_temperature").processors[0].temperature == 0.3
    assert Strategy.from_preset("high_temperature").processors[0].temperature == 1.5
    assert Strategy.from_preset("top_k").processors[0].top_k == 5
    assert Strategy.from_preset("top_p").processors[0].top_p == 0.9
    balanced = Strategy.from_preset("balanced")
    assert [p.kind for p in balanced.processors] == ["temperature", "top_k", "top_p"]
    assert (balanced.processors[0].temperature, balanced.processors[1].top_k, balanced.processors[2].top_p) == (0.7, 50, 0.9)
    assert balanced.selector.kind == "sample" and Strategy.from_preset("greedy").selector.kind == "greedy"


def test_composing_in_code_equals_composing_from_dicts():
    in_code = Strategy(
        processors=[decoders.TemperatureConfig(temperature=0.7), decoders.TopKConfig(top_k=50)],
        selector=decoders.SampleConfig(),
    )
    from_dict = Strategy.model_validate(
        {"processors": [{"kind": "temperature", "temperature": 0.7}, {"kind": "top_k", "top_k": 50}], "selector": {"kind": "sample"}}
    )
    assert in_code == from_dict
    assert in_code.describe() == "temperature(0.7) → top_k(50) → sample"


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_save_and_load_round_trip(tmp_path, suffix):
    strategy = Strategy.model_validate(
        {
            "name": "mine",
            "processors": [
                {"kind": "repetition_penalty", "repetition_penalty": 1.2},
                {"kind": "logit_bias", "logit_bias": {"5": -2.5}},
                {"kind": "top_p", "top_p": 0.8, "min_tokens_to_keep": 2},
            ],
            "selector": {"kind": "sample"},
        }
    )
    path = strategy.save(tmp_path / f"s{suffix}")
    assert Strategy.load(path) == strategy
    assert Strategy.resolve(str(path)) == strategy


def test_resolve_accepts_presets_dicts_and_rejects_unknown_names():
    assert Strategy.resolve("balanced") == Strategy.from_preset("balanced")
    assert Strategy.resolve(None).selector.kind == "greedy"
    assert Strategy.resolve({"selector": {"kind": "sample"}}).selector.kind == "sample"
    with pytest.raises(StrategyError, match="balanced"):
        Strategy.resolve("balancd")
    with pytest.raises(StrategyError, match="does not exist"):
        Strategy.resolve("missing.toml")


def test_json_schema_lists_every_builtin_kind():
    text = json.dumps(Strategy.json_schema())
    for kind in decoders.get_registry().kinds("processor") + decoders.get_registry().kinds("selector"):
        assert f'"const": "{kind}"' in text


def _transformers_chain(config: GenerationConfig, prompt_length: int):
    """The processors transformers' generate builds for ``config`` on a tiny GPT-2."""
    from tests.tiny_models import make_model

    model = make_model("gpt2", 64)
    config.eos_token_id = 0
    config._eos_token_tensor = torch.tensor([0])
    return model._get_logits_processor(generation_config=config, input_ids_seq_length=prompt_length)


GENERATION_CONFIGS = [
    dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.9),
    dict(do_sample=True, top_p=0.8, min_p=0.05, typical_p=0.9, epsilon_cutoff=3e-4, eta_cutoff=3e-4, temperature=1.3),
    dict(do_sample=False, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3, bad_words_ids=[[7], [3, 4]]),
    dict(do_sample=True, top_k=5, repetition_penalty=0.8, sequence_bias={(9,): 5.0}),
]


@pytest.mark.parametrize("fields", GENERATION_CONFIGS)
def test_from_generation_config_builds_the_chain_transformers_builds(fields):
    strategy = Strategy.from_generation_config(GenerationConfig(**fields))
    assert strategy.selector.kind == ("sample" if fields["do_sample"] else "greedy")
    input_ids = torch.tensor([[1, 2, 3, 4, 3], [5, 6, 7, 3, 4]])
    torch.manual_seed(0)
    logits = torch.randn(2, 64) * 3
    theirs = _transformers_chain(GenerationConfig(**fields), prompt_length=3)
    chain = strategy.build()
    chain.reset(decoders.DecodeContext(prompt_length=3, eos_token_ids=(0,)))
    assert len(chain.processors) == len(theirs)
    assert torch.equal(chain.process(input_ids, logits), theirs(input_ids, logits.clone()))


def test_from_generation_config_names_ignored_fields():
    with pytest.warns(UserWarning, match="dola_layers"):
        Strategy.from_generation_config(GenerationConfig(do_sample=False, num_beams=4, dola_layers="high"))
    with pytest.warns(UserWarning, match=r"length_penalty \(num_beams is 1\)"):
        Strategy.from_generation_config({"length_penalty": 2.0})
    with pytest.raises(StrategyError, match="top_k \\(do_sample is off\\)"):
        Strategy.from_generation_config({"do_sample": False, "top_k": 3}, strict=True)


def test_from_generation_config_maps_the_searches():
    diverse = Strategy.from_generation_config({"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5})
    assert diverse.search.model_dump() == {
        "kind": "beam", "num_beams": 4, "length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 1,
        "num_beam_groups": 2, "diversity_penalty": 0.5,
    }  # fmt: skip
    contrastive = Strategy.from_generation_config({"penalty_alpha": 0.6, "top_k": 4}, strict=True)
    assert contrastive.search.model_dump() == {"kind": "contrastive", "penalty_alpha": 0.6, "top_k": 4}
    assert contrastive.processors == [] and contrastive.selector.kind == "greedy"
