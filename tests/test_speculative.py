"""Speculative decoding through the public API: exactness (greedy and sampling), ragged batches, errors, CLI.

Greedy speculative must give plain greedy's tokens; sampling speculative must give the processed target
distribution, checked on known-distribution toy models (a table indexed by the last token) with a chi-square
test on whole sequences against their exact probabilities.
"""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace
from typing import Literal

import pytest
import torch
from pydantic import ValidationError

import decoders
from decoders import GenerationError, StrategyError
from decoders.processors.base import DecodeContext
from tests.test_cli import run, run_json
from tests.test_driver import EOS, TABLE, A, chi_square_pvalue, load_pair, table_tokenizer
from tests.tiny_models import make_model, make_tokenizer, save_tiny_model

RAGGED = ["The quick brown fox jumps over the quick brown fox", "Once", "a b a b a b a b", "Decoding strategies choose"]


def speculative(processors=(), selector="greedy", **search):
    return {"processors": list(processors), "selector": {"kind": selector}, "search": {"kind": "speculative", **search}}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_pair(tiny_model_dir)


@pytest.fixture(scope="module")
def eos_heavy(tiny_model_dir):
    """A tiny model whose most frequent greedy token is a second EOS id, so rows end at different steps."""
    model, tokenizer = load_pair(tiny_model_dir)
    greedy = decoders.generate(RAGGED, model=(model, tokenizer), max_new_tokens=24)
    frequent = Counter(t for r in greedy for t in r.generated_ids).most_common(1)[0][0]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, frequent]
    return model, tokenizer


@pytest.fixture(scope="module")
def other_draft(tiny_model_dir, tmp_path_factory):
    """A second tiny model of the same shape and vocabulary with other random weights (a poor drafter)."""
    shape = "llama" if "llama" in str(tiny_model_dir) else "gpt2"
    return load_pair(save_tiny_model(tmp_path_factory.mktemp("draft"), shape, seed=7))


PROCESSORS = {
    "plain": [],
    "penalties": [{"kind": "repetition_penalty", "repetition_penalty": 1.3}, {"kind": "presence_frequency", "presence_penalty": 0.5, "frequency_penalty": 0.3}],
    "no_repeat_ngram": [{"kind": "no_repeat_ngram", "no_repeat_ngram_size": 2}],
    "min_new_tokens": [{"kind": "min_new_tokens", "min_new_tokens": 8}],
}  # fmt: skip


CASES = [("lookup", name) for name in PROCESSORS] + [("self", "plain"), ("self", "penalties"), ("other", "plain"), ("other", "min_new_tokens")]


@pytest.mark.parametrize("drafter, processors", CASES, ids=[f"{d}-{p}" for d, p in CASES])
def test_greedy_speculative_gives_the_tokens_of_greedy(eos_heavy, other_draft, processors, drafter):
    chain = PROCESSORS[processors]
    search = {
        "lookup": {"prompt_lookup_num_tokens": 4},
        "self": {"assistant_model": eos_heavy, "num_assistant_tokens": 3, "num_assistant_tokens_schedule": "constant"},
        "other": {"assistant_model": other_draft, "num_assistant_tokens": 2},
    }[drafter]
    plain = decoders.generate(RAGGED, {"processors": chain}, model=eos_heavy, max_new_tokens=24, logprobs=2)
    fast = decoders.generate(RAGGED, speculative(chain, **search), model=eos_heavy, max_new_tokens=24, logprobs=2)
    assert [r.generated_ids for r in fast] == [r.generated_ids for r in plain]
    assert [r.finish_reason for r in fast] == [r.finish_reason for r in plain]
    if processors == "plain":
        assert {r.finish_reason for r in plain} == {"eos", "length"}  # rows end at different steps
    for a, b in zip(fast, plain):
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert len(a.logprobs) == len(a.generated_ids)
        assert [s.chosen.processed for s in a.logprobs] == pytest.approx([s.chosen.processed for s in b.logprobs], abs=1e-4)
        assert [[t.token_id for t in s.top] for s in a.logprobs] == [[t.token_id for t in s.top] for s in b.logprobs]
    stats = [r.speculation for r in fast]
    assert all(0 <= s.accepted <= s.drafted for s in stats)
    if drafter == "other":  # another random model: its drafts were verified (kept or rolled back)
        assert sum(s.drafted for s in stats) > 0
    elif processors == "plain":  # (penalties and n-gram bans can reject every draft that repeats the text)
        assert sum(s.accepted for s in stats) > 0  # the drafts were used, not only the target's own tokens
    if drafter == "self":  # the model drafting for itself: every draft is what it then chooses
        assert all(s.accepted == s.drafted for s in stats)


def test_greedy_speculative_equals_transformers_greedy_and_needs_fewer_forward_passes(tiny):
    model, tokenizer = tiny
    prompt = "one two three four five one two three four five one two"
    inputs = tokenizer([prompt], return_tensors="pt")
    expected = model.generate(**inputs, do_sample=False, max_new_tokens=30, pad_token_id=tokenizer.pad_token_id)
    expected = expected[0, inputs["input_ids"].shape[1] :].tolist()
    result = decoders.generate(prompt, speculative(prompt_lookup_num_tokens=8), model=tiny, max_new_tokens=30, ignore_eos=True)
    assert result.generated_ids == expected[: len(result.generated_ids)]
    assert result.speculation.steps + 1 <= len(result.generated_ids)  # one forward pass per step, plus the prompt


def test_a_row_of_a_ragged_batch_gets_what_it_gets_alone(tiny):
    strategy = speculative(prompt_lookup_num_tokens=5)
    batch = decoders.generate(RAGGED, strategy, model=tiny, max_new_tokens=20)
    for prompt, together in zip(RAGGED, batch):
        alone = decoders.generate(prompt, strategy, model=tiny, max_new_tokens=20)
        assert alone.generated_ids == together.generated_ids


def test_stop_strings_and_streaming_with_speculative(tiny):
    model, tokenizer = tiny
    plain = decoders.generate(RAGGED[0], model=tiny, max_new_tokens=20)
    stop = plain.text[5:9]
    strategy = speculative(prompt_lookup_num_tokens=6)
    cut = decoders.generate(RAGGED[0], strategy, model=tiny, max_new_tokens=20, stop=stop)
    assert cut.finish_reason == "stop" and cut.text == plain.text[: plain.text.index(stop)]
    events = list(decoders.stream(RAGGED, strategy, model=tiny, max_new_tokens=20))
    results = events[-1].results
    for row, result in enumerate(results):
        assert "".join(e.texts[row] for e in events[:-1]) == result.text
    assert [r.generated_ids for r in results] == [r.generated_ids for r in decoders.generate(RAGGED, model=tiny, max_new_tokens=20)]


# ---- sampling: the processed target distribution, exactly -----------------------------------------------


class AllTableLM(torch.nn.Module):
    """Next-token logits ``log(table[token])`` at every position (speculative decoding reads them all)."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("log_table", torch.tensor(table).log())

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        ids = input_ids[:, -logits_to_keep:] if logits_to_keep else input_ids
        return SimpleNamespace(logits=self.log_table[ids], cache=(cache or 0) + input_ids.shape[1])


#: a draft table unlike TABLE (rows eos, a, b, c), so that many drafts are rejected
DRAFT_TABLE = [
    [0.25, 0.25, 0.25, 0.25],
    [0.1, 0.5, 0.1, 0.3],
    [0.2, 0.2, 0.5, 0.1],
    [0.3, 0.3, 0.1, 0.3],
]


def exact_probabilities(strategy, table, prompt_ids, max_new_tokens):
    """Every sequence's probability under the chain applied to the table, with its whole history."""
    chain = decoders.Strategy.model_validate(strategy).build()
    chain.reset(DecodeContext(prompt_length=len(prompt_ids), eos_token_ids=(EOS,)))
    log_table = torch.tensor(table).log()
    probabilities = {}

    def extend(generated, probability):
        if len(generated) == max_new_tokens or (generated and generated[-1] == EOS):
            probabilities[tuple(generated)] = probability
            return
        ids = torch.tensor([prompt_ids + generated])
        p = torch.softmax(chain.process(ids, log_table[ids[:, -1]]).double(), dim=-1)[0].tolist()
        for token, q in enumerate(p):
            if q > 0:
                extend([*generated, token], probability * q)

    extend([], 1.0)
    return probabilities


CHAINS = {
    "temperature_top_k": [{"kind": "temperature", "temperature": 0.7}, {"kind": "top_k", "top_k": 3}],
    "top_p": [{"kind": "top_p", "top_p": 0.8}],
    "repetition_penalty": [{"kind": "repetition_penalty", "repetition_penalty": 1.8}],
}


@pytest.mark.parametrize("chain", CHAINS, ids=list(CHAINS))
@pytest.mark.parametrize("drafter", ["draft_model", "prompt_lookup"])
def test_sampling_speculative_follows_the_processed_target_distribution(chain, drafter):
    draws, max_new_tokens = 4000, 3
    tokenizer = table_tokenizer()
    if drafter == "draft_model":
        prompt, search = "a", {"assistant_model": (AllTableLM(DRAFT_TABLE), tokenizer), "num_assistant_tokens": 2}
    else:
        prompt, search = "a b c a b", {"prompt_lookup_num_tokens": 3, "max_matching_ngram_size": 2}
    strategy = speculative(CHAINS[chain], "sample", **search)
    results = decoders.generate(
        [prompt] * draws, strategy, model=(AllTableLM(TABLE), tokenizer), max_new_tokens=max_new_tokens, seed=0
    )
    drafted = sum(r.speculation.drafted for r in results)
    accepted = sum(r.speculation.accepted for r in results)
    assert 0 < accepted < drafted  # drafts were both kept and rejected
    assert len({(r.speculation.accepted, len(r.generated_ids)) for r in results}) > 3  # rows went differently
    counts = Counter(tuple(r.generated_ids) for r in results)
    prompt_ids = tokenizer(prompt)["input_ids"]
    expected = exact_probabilities({"processors": CHAINS[chain]}, TABLE, prompt_ids, max_new_tokens)
    assert set(counts) <= set(expected), "a sequence the chain forbids was generated"
    assert math.isclose(sum(expected.values()), 1.0)
    # seeded, so it cannot flake; a wrong rule (e.g. keeping every draft) gives p-values far below this
    assert chi_square_pvalue(counts, expected, draws) > 1e-3


def test_keeping_every_draft_would_fail_the_distribution_check():
    """The check above has teeth: the draft table's own distribution is far from the target's."""
    target = exact_probabilities({"processors": []}, TABLE, [A], 3)
    draft = exact_probabilities({"processors": []}, DRAFT_TABLE, [A], 3)
    assert max(abs(target[s] - draft.get(s, 0)) for s in target) > 0.03


def test_sampling_speculative_is_reproducible_and_a_row_does_not_depend_on_the_batch():
    tokenizer = table_tokenizer()
    strategy = speculative([{"kind": "top_k", "top_k": 3}], "sample", assistant_model=(AllTableLM(DRAFT_TABLE), tokenizer))
    model = (AllTableLM(TABLE), tokenizer)
    batch = decoders.generate(["a", "b", "c a b c"], strategy, model=model, max_new_tokens=8, seed=[3, 4, 5])
    again = decoders.generate(["a", "b", "c a b c"], strategy, model=model, max_new_tokens=8, seed=[3, 4, 5])
    alone = decoders.generate("b", strategy, model=model, max_new_tokens=8, seed=4)
    assert [r.generated_ids for r in batch] == [r.generated_ids for r in again]
    assert batch[1].generated_ids == alone.generated_ids


# ---- stateful processors: rollback -----------------------------------------------------------------------


class BanGenerated(decoders.Processor):
    """Bans every token it accepted (per row), keeping its own memory: follows reorders and rollbacks."""

    kind = "ban_generated"

    def reset(self, context):
        super().reset(context)
        self.seen: list[list[int]] | None = None

    def process(self, input_ids, logits):
        out = logits.clone()
        for row, tokens in enumerate(self.seen or []):
            if tokens and len(tokens) < logits.shape[-1] - 1:
                out[row, tokens] = float("-inf")
        return out

    def accept(self, tokens):
        if self.seen is None:
            self.seen = [[] for _ in range(tokens.shape[0])]
        for row, token in enumerate(tokens.tolist()):
            self.seen[row].append(token)

    def reorder(self, rows):
        self.seen = [list(self.seen[row]) for row in rows.tolist()] if self.seen is not None else None

    def rollback(self, counts):
        for row, count in enumerate(counts):
            if count:
                del self.seen[row][-count:]


class Forgetful(BanGenerated):
    """The same, without rollback: refused by speculative decoding."""

    kind = "forgetful"
    rollback = decoders.Processor.rollback


def _config(kind_name, cls):
    class Config(decoders.ProcessorConfig):
        kind: Literal[kind_name] = kind_name  # type: ignore[valid-type]

        def build(self):
            return cls()

    Config.__doc__ = f"{kind_name} (test)"
    return Config


class StatefulPlugin:
    @decoders.hookimpl
    def decoders_register_processors(self, register):
        register(_config("ban_generated", BanGenerated))
        register(_config("forgetful", Forgetful))


@pytest.fixture
def stateful_plugin():
    decoders.register_plugin(StatefulPlugin(), "stateful-test")
    yield
    decoders.unregister_plugin("stateful-test")


def test_a_stateful_processor_is_rolled_back_to_the_accepted_tokens(stateful_plugin, tiny):
    chain = [{"kind": "ban_generated"}]
    plain = decoders.generate(RAGGED, {"processors": chain}, model=tiny, max_new_tokens=16)
    fast = decoders.generate(RAGGED, speculative(chain, prompt_lookup_num_tokens=4), model=tiny, max_new_tokens=16)
    assert [r.generated_ids for r in fast] == [r.generated_ids for r in plain]
    assert all(len(set(r.generated_ids)) == len(r.generated_ids) for r in fast)


def test_a_stateful_processor_without_rollback_is_refused_when_built(stateful_plugin):
    strategy = decoders.Strategy.model_validate(speculative([{"kind": "forgetful"}], prompt_lookup_num_tokens=4))
    with pytest.raises(StrategyError, match=r"processor #1 'forgetful'.*rollback.*'speculative' search"):
        strategy.build()


# ---- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "search, message",
    [
        ({"prompt_lookup_num_tokens": 0}, "prompt_lookup_num_tokens"),
        ({"prompt_lookup_num_tokens": -3}, "prompt_lookup_num_tokens"),
        ({"prompt_lookup_num_tokens": 4, "max_matching_ngram_size": 0}, "max_matching_ngram_size"),
        ({"assistant_model": "some/model", "num_assistant_tokens": 0}, "num_assistant_tokens"),
        ({"assistant_model": "some/model", "num_assistant_tokens_schedule": "often"}, "num_assistant_tokens_schedule"),
        ({}, "exactly one drafter"),
        ({"prompt_lookup_num_tokens": 4, "assistant_model": "some/model"}, "exactly one drafter"),
        ({"assistant_model": 3}, "assistant_model"),
    ],
)
def test_bad_speculative_settings_are_clear_errors(search, message):
    with pytest.raises(ValidationError, match=message):
        decoders.Strategy.resolve(speculative(**search))


def test_a_draft_model_with_another_vocabulary_is_refused_naming_both_sizes(tiny):
    model, tokenizer = tiny
    draft = make_model("gpt2", vocab_size=len(make_tokenizer()) + 64)
    with pytest.raises(GenerationError, match=r"draft model's vocabulary has \d+ entries and the target's \d+"):
        decoders.generate("Once", speculative(assistant_model=(draft, tokenizer)), model=tiny, max_new_tokens=4)


def test_a_draft_that_is_not_a_causal_lm_is_refused(tiny, tmp_path):
    with pytest.raises(GenerationError, match="assistant_model"):
        decoders.generate("Once", speculative(assistant_model=(object(), tiny[1])), model=tiny, max_new_tokens=4)
    from transformers import T5Config, T5ForConditionalGeneration

    T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(GenerationError, match="assistant_model: .*AutoModelForCausalLM"):
        decoders.generate("Once", speculative(assistant_model=str(tmp_path)), model=tiny, max_new_tokens=4)


def test_speculative_with_beam_search_is_refused():
    with pytest.raises(StrategyError, match="speculative decoding.*beam search"):
        decoders.Strategy.from_generation_config({"prompt_lookup_num_tokens": 10, "num_beams": 4})
    assert decoders.Strategy.from_generation_config({"prompt_lookup_num_tokens": 10}).search.kind == "speculative"



def test_the_cli_refuses_speculative_and_beam_flags_together(capsys, tiny_model_dir):
    code, _, err = run(
        capsys, "generate", "Once", "--model", str(tiny_model_dir), "--num-beams", "4", "--prompt-lookup-num-tokens", "10"
    )
    assert code != 0 and "different searches (beam, speculative)" in err


# ---- visible: results, CLI, explain -------------------------------------------------------------------------


def test_cli_speculative_prompt_lookup_and_assistant_model(capsys, tiny_model_dir):
    prompt = "one two three one two three one two"
    plain = run_json(capsys, "generate", prompt, "--model", str(tiny_model_dir), "--max-new-tokens", "12")
    lookup = run_json(
        capsys, "generate", prompt, "--model", str(tiny_model_dir), "--max-new-tokens", "12",
        "--search", "speculative", "--prompt-lookup-num-tokens", "10",
    )  # fmt: skip
    drafted = run_json(
        capsys, "generate", prompt, "--model", str(tiny_model_dir), "--max-new-tokens", "12",
        "--assistant-model", str(tiny_model_dir), "--num-assistant-tokens", "3",
    )  # fmt: skip
    for data in (lookup, drafted):
        [result] = data["results"]
        assert result["generated_ids"] == plain["results"][0]["generated_ids"]
        assert set(result["speculation"]) >= {"drafted", "accepted", "steps"}
    assert drafted["strategy"]["search"]["assistant_model"] == str(tiny_model_dir)
    code, _, err = run(
        capsys, "generate", prompt, "--model", str(tiny_model_dir), "--max-new-tokens", "12", "--prompt-lookup-num-tokens", "10"
    )
    assert code == 0 and "drafted tokens" in err


def test_explain_shows_the_drafts_and_where_the_target_disagreed(capsys, tiny_model_dir):
    code, out, err = run(
        capsys, "explain", "one two three one two three one two", "--model", str(tiny_model_dir),
        "--search", "speculative", "--prompt-lookup-num-tokens", "6", "--steps", "8",
    )  # fmt: skip
    assert code == 0, err
    assert "drafted" in out and "accepted" in out
    trace = decoders.generate(
        "one two three one two three one two", speculative(prompt_lookup_num_tokens=6),
        model=decoders.load_model(tiny_model_dir), max_new_tokens=8, trace=True,
    )[0]  # fmt: skip
    records = trace.speculation.records
    assert records and all(r.accepted <= len(r.drafted) for r in records)
    assert len(trace.steps) == len(trace.generated_ids)  # every token's stages, as the single search traces them
    positions = [r.position for r in records]
    assert positions == sorted(positions)
    for record in records:  # the target's own token follows the accepted drafts in the output
        end = record.position + record.accepted
        assert trace.generated_ids[record.position : end] == record.drafted[: record.accepted]
        if end < len(trace.generated_ids):
            assert trace.generated_ids[end] == record.token


@pytest.mark.embedded
def test_embedded_model_greedy_speculative_is_greedy():
    loaded = decoders.load_model()
    passage = "The committee met on Tuesday to discuss the budget. It approved the new library and the park."
    prompt = f"Repeat this text exactly: {passage}"
    plain = decoders.generate(prompt, model=loaded, max_new_tokens=40, chat=True)
    for search in ({"prompt_lookup_num_tokens": 10}, {"assistant_model": loaded, "num_assistant_tokens": 4}):
        fast = decoders.generate(prompt, speculative(**search), model=loaded, max_new_tokens=40, chat=True)
        assert fast.generated_ids == plain.generated_ids
        assert fast.speculation.accepted > 0


def test_lookup_draft_takes_the_earliest_longest_match():
    from decoders.searches.speculative import lookup_draft

    assert lookup_draft([5, 6, 7, 8, 5, 6], 2, 5) == [7, 8, 5, 6]
    assert lookup_draft([1, 2, 9, 3, 2], 2, 3) == [9, 3, 2]  # no bigram match: the unigram 2 matches
    assert lookup_draft([1, 2, 3], 2, 3) == []
    assert lookup_draft([4, 4, 4, 4], 3, 2) == [4]  # only tokens already written can follow a match
