"""Bad input is rejected early, with a message that says where the problem is and what to do.

- invalid config values: pydantic rejects them with the field path (``processors.0.top_k.top_k``);
- unknown kinds: the message lists the valid ones;
- the processor classes themselves refuse the same values when built directly;
- non-finite logits and rows left without any token: :class:`decoders.NonFiniteLogitsError` naming the
  processor (and the row);
- strategy files (JSON, TOML) with a typo: :class:`decoders.StrategyError` naming the file and the field.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from pydantic import ValidationError

import decoders
from decoders import processors as p
from decoders.builtins import PROCESSOR_CONFIGS, SELECTOR_CONFIGS
from tests.logits_strategies import build

NAN, INF = math.nan, math.inf
NO_IDS = torch.zeros(2, 0, dtype=torch.long)

# (processor config, the field path pydantic must report, a word the message must contain)
INVALID = [
    ({"kind": "temperature", "temperature": 0}, "temperature.temperature", "greedy"),
    ({"kind": "temperature", "temperature": 0.0}, "temperature.temperature", "greedy"),
    ({"kind": "temperature", "temperature": -1}, "temperature.temperature", "greater than 0"),
    ({"kind": "temperature", "temperature": NAN}, "temperature.temperature", "finite"),
    ({"kind": "temperature", "temperature": INF}, "temperature.temperature", "finite"),
    ({"kind": "temperature"}, "temperature.temperature", "required"),
    ({"kind": "top_k", "top_k": 0}, "top_k.top_k", "leave the processor out"),
    ({"kind": "top_k", "top_k": -1}, "top_k.top_k", "leave the processor out"),
    ({"kind": "top_k", "top_k": 2.5}, "top_k.top_k", "integer"),
    ({"kind": "top_k", "top_k": 5, "min_tokens_to_keep": 0}, "top_k.min_tokens_to_keep", "greater than or equal to 1"),
    ({"kind": "top_k", "topk": 5}, "top_k.topk", "Extra inputs are not permitted"),
    ({"kind": "top_p", "top_p": 0}, "top_p.top_p", "greater than 0"),
    ({"kind": "top_p", "top_p": 1.5}, "top_p.top_p", "less than or equal to 1"),
    ({"kind": "top_p", "top_p": NAN}, "top_p.top_p", "finite"),
    ({"kind": "min_p", "min_p": -0.1}, "min_p.min_p", "greater than or equal to 0"),
    ({"kind": "min_p", "min_p": 1.1}, "min_p.min_p", "less than or equal to 1"),
    ({"kind": "typical_p", "typical_p": 0}, "typical_p.typical_p", "greater than 0"),
    ({"kind": "epsilon_cutoff", "epsilon_cutoff": 1}, "epsilon_cutoff.epsilon_cutoff", "less than 1"),
    ({"kind": "epsilon_cutoff", "epsilon_cutoff": 0}, "epsilon_cutoff.epsilon_cutoff", "leave the processor out"),
    ({"kind": "eta_cutoff", "eta_cutoff": 0}, "eta_cutoff.eta_cutoff", "leave the processor out"),
    ({"kind": "eta_cutoff", "eta_cutoff": 1.5}, "eta_cutoff.eta_cutoff", "less than 1"),
    ({"kind": "top_n_sigma", "top_n_sigma": 0}, "top_n_sigma.top_n_sigma", "leave the processor out"),
    ({"kind": "top_n_sigma", "top_n_sigma": -2.0}, "top_n_sigma.top_n_sigma", "greater than 0"),
    (
        {"kind": "repetition_penalty", "repetition_penalty": 0},
        "repetition_penalty.repetition_penalty",
        "greater than 0",
    ),
    ({"kind": "presence_frequency", "penalty_last_n": 0}, "presence_frequency.penalty_last_n", "≥ 1"),
    ({"kind": "presence_frequency", "penalty_last_n": -1}, "presence_frequency.penalty_last_n", "≥ 1"),
    ({"kind": "presence_frequency", "presence_penalty": NAN}, "presence_frequency.presence_penalty", "finite"),
    ({"kind": "presence_frequency", "frequency_penalty": INF}, "presence_frequency.frequency_penalty", "finite"),
    (
        {"kind": "no_repeat_ngram", "no_repeat_ngram_size": 0},
        "no_repeat_ngram.no_repeat_ngram_size",
        "leave the processor out",
    ),
    ({"kind": "min_new_tokens", "min_new_tokens": -1}, "min_new_tokens.min_new_tokens", "greater than or equal to 0"),
    (
        {"kind": "min_new_tokens", "min_new_tokens": 2, "eos_token_id": -3},
        "min_new_tokens.eos_token_id",
        "greater than or equal to 0",
    ),
    ({"kind": "min_new_tokens", "min_new_tokens": 2, "eos_token_id": []}, "min_new_tokens.eos_token_id", "at least 1"),
    ({"kind": "logit_bias", "logit_bias": {5: NAN}}, "logit_bias.logit_bias", "-inf to ban"),
    ({"kind": "logit_bias", "logit_bias": {5: INF}}, "logit_bias.logit_bias", "-inf to ban"),
    ({"kind": "logit_bias", "logit_bias": {-1: 2.0}}, "logit_bias.logit_bias.-1.[key]", "greater than or equal to 0"),
    ({"kind": "logit_bias", "logit_bias": {}}, "logit_bias.logit_bias", "at least 1"),
    ({"kind": "bad_words", "bad_words_ids": []}, "bad_words.bad_words_ids", "at least 1"),
    ({"kind": "bad_words", "bad_words_ids": [[]]}, "bad_words.bad_words_ids.0", "at least 1"),
    ({"kind": "bad_words", "bad_words_ids": [[3, -2]]}, "bad_words.bad_words_ids.0.1", "greater than or equal to 0"),
]


@pytest.mark.parametrize(
    ("config", "path", "words"), INVALID, ids=[f"{c['kind']}:{path}:{i}" for i, (c, path, _) in enumerate(INVALID)]
)
def test_invalid_values_are_rejected_with_the_field_path(config, path, words):
    with pytest.raises(ValidationError) as info:
        decoders.Strategy.model_validate({"processors": [{"kind": "temperature", "temperature": 0.7}, config]})
    message = str(info.value)
    assert f"processors.1.{path}" in message
    assert words in message
    # and through the config class on its own (the path then starts at the field)
    config_class = next(c for c in PROCESSOR_CONFIGS if c.kind_name() == config["kind"])
    with pytest.raises(ValidationError, match=path.split(".", 1)[1].replace("[", r"\[")):
        config_class.model_validate(config)


def test_every_builtin_kind_has_an_invalid_case():
    assert {config["kind"] for config, _, _ in INVALID} == {c.kind_name() for c in PROCESSOR_CONFIGS}


def test_valid_edge_values_are_accepted():
    """The edges that are legal stay legal (so the rejections above are about the values, not the kinds)."""
    strategy = decoders.Strategy.model_validate(
        {
            "processors": [
                {"kind": "top_p", "top_p": 1},
                {"kind": "min_p", "min_p": 0},
                {"kind": "min_p", "min_p": 1},
                {"kind": "typical_p", "typical_p": 1},
                {"kind": "min_new_tokens", "min_new_tokens": 0, "eos_token_id": 0},
                {"kind": "logit_bias", "logit_bias": {"7": "-inf"}},
                {"kind": "presence_frequency", "presence_penalty": -1.5, "frequency_penalty": 2, "penalty_last_n": 1},
            ]
        }
    )
    assert len(strategy.build().processors) == 7


def test_an_unknown_processor_kind_lists_the_valid_ones():
    with pytest.raises(ValidationError) as info:
        decoders.Strategy.model_validate({"processors": [{"kind": "topk", "top_k": 5}]})
    message = str(info.value)
    assert "processors.0" in message and "'topk'" in message
    for config in PROCESSOR_CONFIGS:
        assert f"'{config.kind_name()}'" in message


def test_an_unknown_selector_kind_lists_the_valid_ones():
    with pytest.raises(ValidationError) as info:
        decoders.Strategy.model_validate({"selector": {"kind": "beam_search"}})
    message = str(info.value)
    assert "selector" in message and "'beam_search'" in message
    for config in SELECTOR_CONFIGS:
        assert f"'{config.kind_name()}'" in message


def test_a_missing_kind_and_an_unknown_top_level_field_are_rejected():
    with pytest.raises(ValidationError, match=r"processors\.0[\s\S]*kind"):
        decoders.Strategy.model_validate({"processors": [{"top_k": 5}]})
    with pytest.raises(ValidationError, match=r"processor\n[\s\S]*Extra inputs are not permitted"):
        decoders.Strategy.model_validate({"processor": [{"kind": "top_k", "top_k": 5}]})


# ---- the processor classes refuse the same values when built directly -------------------------------------

DIRECT = [
    (lambda: p.Temperature(0), "temperature must be a finite number > 0, got 0; temperature 0 is greedy"),
    (lambda: p.Temperature(NAN), "temperature must be"),
    (lambda: p.TopK(0), "top_k must be an integer ≥ 1, got 0"),
    (lambda: p.TopK(5, min_tokens_to_keep=0), "min_tokens_to_keep must be an integer ≥ 1"),
    (lambda: p.TopP(1.5), r"top_p must be in \(0, 1\], got 1.5"),
    (lambda: p.TopP(0.0), r"top_p must be in \(0, 1\]"),
    (lambda: p.MinP(-0.1), r"min_p must be in \[0, 1\]"),
    (lambda: p.TypicalP(0), r"typical_p must be in \(0, 1\]"),
    (lambda: p.EpsilonCutoff(1.0), r"epsilon_cutoff must be in \(0, 1\)"),
    (lambda: p.EtaCutoff(0.0), r"eta_cutoff must be in \(0, 1\)"),
    (lambda: p.TopNSigma(0), "top_n_sigma must be a finite number > 0"),
    (lambda: p.RepetitionPenalty(0), "repetition_penalty must be a finite number > 0"),
    (lambda: p.PresenceFrequency(penalty_last_n=0), "penalty_last_n must be None or an integer ≥ 1"),
    (lambda: p.PresenceFrequency(presence_penalty=NAN), "presence_penalty must be a finite number"),
    (lambda: p.NoRepeatNGram(0), "no_repeat_ngram_size must be an integer ≥ 1"),
    (lambda: p.MinNewTokens(-1), "min_new_tokens must be an integer ≥ 0"),
    (lambda: p.MinNewTokens(2, eos_token_id=[]), "eos_token_id must be"),
    (lambda: p.LogitBias({1: NAN}), "the bias of token 1 must be a finite number or -inf"),
    (lambda: p.LogitBias({-1: 1.0}), "a logit_bias token id must be an integer ≥ 0"),
    (lambda: p.BadWords([]), "bad_words_ids must be a non-empty list"),
    (lambda: p.BadWords([[1], []]), "bad_words_ids must be a non-empty list of non-empty"),
]


@pytest.mark.parametrize(("make", "message"), DIRECT, ids=[m.split(" must")[0] for _, m in DIRECT])
def test_processors_refuse_invalid_values_when_built(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---- logits that cannot make a distribution ---------------------------------------------------------------


@pytest.mark.parametrize("use_candidates", [True, False])
@pytest.mark.parametrize("bad", [NAN, INF])
def test_non_finite_logits_name_the_processor_and_the_row(bad, use_candidates):
    x = torch.zeros(2, 100)
    x[1, 42] = bad
    chain = build(
        [{"kind": "temperature", "temperature": 0.7}, {"kind": "top_k", "top_k": 5}],
        "sample",
        use_candidates=use_candidates,
    )
    problem = "contain NaN" if math.isnan(bad) else r"contain \+inf"
    with pytest.raises(
        decoders.NonFiniteLogitsError, match=f"given to processor #1 'temperature' {problem} in batch row 1"
    ):
        chain.select(NO_IDS, x)
    with pytest.raises(decoders.NonFiniteLogitsError, match="given to selector 'greedy'"):
        build([]).select(NO_IDS, x)


def test_a_processor_that_overflows_is_named():
    x = torch.tensor([[3e38, 0.0], [1.0, 0.0]])
    with pytest.raises(
        decoders.NonFiniteLogitsError, match=r"returned by processor #2 'temperature' contain \+inf in batch row 0"
    ):
        build([{"kind": "top_k", "top_k": 2}, {"kind": "temperature", "temperature": 0.5}]).process(NO_IDS, x)


def test_nan_logits_error_is_a_decoders_error_and_a_value_error():
    with pytest.raises(decoders.DecodersError):
        build([]).process(NO_IDS[:1], torch.tensor([[NAN, 0.0]]))
    assert issubclass(decoders.NonFiniteLogitsError, ValueError)


@pytest.mark.parametrize("use_candidates", [True, False])
def test_a_row_with_every_token_removed_raises_a_clear_error(use_candidates):
    vocab = 50
    chain = build(
        [{"kind": "top_k", "top_k": 3}, {"kind": "logit_bias", "logit_bias": {i: "-inf" for i in range(vocab)}}],
        "sample",
        use_candidates=use_candidates,
    )
    x = torch.randn(2, vocab, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        decoders.NonFiniteLogitsError,
        match=r"returned by processor #2 'logit_bias' have every token removed \(all -inf\) in batch row 0",
    ):
        chain.select(NO_IDS, x, [torch.Generator().manual_seed(s) for s in (1, 2)])


def test_a_row_that_arrives_empty_is_reported_before_any_processor():
    x = torch.tensor([[0.0, 1.0], [-INF, -INF]])
    with pytest.raises(
        decoders.NonFiniteLogitsError, match="given to processor #1 'top_p' have every token removed.*row 1"
    ):
        build([{"kind": "top_p", "top_p": 0.9}]).process(NO_IDS, x)


# ---- ids that do not fit the model ------------------------------------------------------------------------


@pytest.mark.parametrize("use_candidates", [True, False])
@pytest.mark.parametrize(
    "config",
    [
        {"kind": "logit_bias", "logit_bias": {500: 1.0}},
        {"kind": "bad_words", "bad_words_ids": [[500]]},
        {"kind": "min_new_tokens", "min_new_tokens": 3, "eos_token_id": 500},
    ],
    ids=lambda c: c["kind"],
)
def test_token_ids_outside_the_vocabulary_are_named(config, use_candidates):
    chain = build([{"kind": "top_k", "top_k": 2}, config], use_candidates=use_candidates)
    with pytest.raises(ValueError, match="token id 500, outside the model's vocabulary of 100 tokens"):
        chain.process(NO_IDS, torch.randn(2, 100, generator=torch.Generator().manual_seed(0)))


def test_min_new_tokens_without_an_eos_id_says_what_to_set():
    chain = build([{"kind": "min_new_tokens", "min_new_tokens": 2}])
    chain.reset(decoders.DecodeContext(prompt_length=0))
    with pytest.raises(ValueError, match="min_new_tokens needs the end-of-sequence token ids: set eos_token_id"):
        chain.process(NO_IDS, torch.zeros(2, 10))


# ---- strategy files ---------------------------------------------------------------------------------------

FILES = [
    (
        "strategy.json",
        '{"processors": [{"kind": "top_k", "topk": 5}], "selector": {"kind": "sample"}}',
        [r"processors\.0\.top_k\.topk", "Extra inputs are not permitted"],
    ),
    (
        "strategy.toml",
        '[[processors]]\nkind = "top_p"\ntop_p = 1.5\n\n[selector]\nkind = "sample"\n',
        [r"processors\.0\.top_p\.top_p", "less than or equal to 1"],
    ),
    (
        "kind.toml",
        '[[processors]]\nkind = "temprature"\ntemperature = 0.7\n',
        [r"processors\.0", "'temprature'", "'temperature'"],
    ),
    ("selector.json", '{"selector": {"kind": "sampel"}}', ["selector", "'sampel'", "'sample'"]),
    ("syntax.json", '{"processors": [', ["is not valid JSON"]),
    ("syntax.toml", "[[processors]\nkind = 1\n", ["is not valid TOML"]),
]


@pytest.mark.parametrize(("name", "text", "patterns"), FILES, ids=[f[0] for f in FILES])
def test_strategy_files_with_a_typo_name_the_file_and_the_field(tmp_path, name, text, patterns):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    for load in (decoders.Strategy.load, decoders.Strategy.resolve):
        with pytest.raises(decoders.StrategyError) as info:
            load(path)
        message = str(info.value)
        assert str(path) in message
        for pattern in patterns:
            assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def test_a_missing_strategy_file_or_preset_is_named(tmp_path):
    with pytest.raises(decoders.StrategyError, match="missing.toml' does not exist"):
        decoders.Strategy.load(tmp_path / "missing.toml")
    with pytest.raises(decoders.StrategyError, match="'balancd' is neither a preset"):
        decoders.Strategy.resolve("balancd")


def test_a_valid_file_round_trips(tmp_path):
    """The file tests above fail on the typo, not on the file handling."""
    strategy = decoders.Strategy.from_preset("llama_cpp")
    for suffix in (".json", ".toml"):
        assert decoders.Strategy.load(strategy.save(tmp_path / f"s{suffix}")) == strategy
