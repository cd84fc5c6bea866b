"""The generation loop through the public API (``decoders.generate`` / ``decoders.stream``).

Three kinds of model: the tiny random GPT-2/Llama models (parity with ``model.generate``), a toy LM whose
next-token distribution is a fixed table indexed by the last token (so every whole sequence has a known
probability), and a scripted LM that writes fixed tokens (exact texts: stop strings, EOS, multi-byte UTF-8).
"""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chisquare
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import decoders
from decoders import GenerationError, StrategyError
from tests.tiny_models import make_tokenizer

PROMPTS = ["The quick brown fox jumps", "Once", "Decoding strategies choose"]


def load_pair(folder):
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """A tiny random model (GPT-2 and Llama shapes) and its tokenizer."""
    return load_pair(tiny_model_dir)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return load_pair(tiny_gpt2_dir)


def hf_greedy(model, tokenizer, prompts, max_new_tokens, **options):
    """What ``model.generate`` writes for each prompt: generated ids up to and including the first EOS."""
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    output = model.generate(
        **inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **options
    )
    rows = output[:, inputs["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


# ---- toy models -----------------------------------------------------------------------------------------

EOS, A, B, C = 0, 1, 2, 3
#: next-token probabilities (eos, a, b, c) given the last token; no ties, so truncations are unambiguous
TABLE = [
    [0.25, 0.25, 0.25, 0.25],  # after eos (never used: a row ends there)
    [0.2, 0.1, 0.4, 0.3],  # after a
    [0.3, 0.4, 0.1, 0.2],  # after b
    [0.1, 0.2, 0.3, 0.4],  # after c
]
#: TABLE through top_k 2, renormalised by hand: the two most likely tokens of each row
TABLE_TOP_K_2 = [
    [0.25, 0.25, 0.25, 0.25],
    [0, 0, 4 / 7, 3 / 7],
    [3 / 7, 4 / 7, 0, 0],
    [0, 0, 3 / 7, 4 / 7],
]
#: TABLE through top_p 0.75: the least likely token of each row goes (its mass 0.1 ≤ 1 - 0.75), the rest / 0.9
TABLE_TOP_P_075 = [
    [0.25, 0.25, 0.25, 0.25],
    [2 / 9, 0, 4 / 9, 3 / 9],
    [3 / 9, 4 / 9, 0, 2 / 9],
    [0, 2 / 9, 3 / 9, 4 / 9],
]


class TableLM(torch.nn.Module):
    """A causal LM whose next-token logits are ``log(table[last token])``; its "cache" counts tokens seen."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("log_table", torch.tensor(table).log())

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        return SimpleNamespace(logits=self.log_table[input_ids[:, -1:]], cache=(cache or 0) + input_ids.shape[1])


def table_tokenizer():
    vocab = {"<eos>": EOS, "a": A, "b": B, "c": C}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")


def sequence_probabilities(table, first, max_new_tokens):
    """Exact probability of every possible generated sequence (ending at EOS or at max_new_tokens)."""
    probabilities = {}

    def extend(sequence, last, probability):
        if len(sequence) == max_new_tokens:
            probabilities[tuple(sequence)] = probability
            return
        for token, p in enumerate(table[last]):
            if p == 0:
                continue
            if token == EOS:
                probabilities[(*sequence, EOS)] = probability * p
            else:
                extend([*sequence, token], token, probability * p)

    extend([], first, 1.0)
    return probabilities


def chi_square_pvalue(counts, expected, draws):
    """The chi-square p-value of observed ``counts`` against ``expected`` probabilities (of any hashable outcome).

    Outcomes expected fewer than 5 times are pooled into one bin, as the test needs (left out when it is empty).
    """
    common = [s for s, p in expected.items() if p * draws >= 5]
    observed = [counts[s] for s in common] + [draws - sum(counts[s] for s in common)]
    wanted = [expected[s] * draws for s in common] + [draws * (1 - sum(expected[s] for s in common))]
    if wanted[-1] < 1e-9:
        observed, wanted = observed[:-1], wanted[:-1]
    return chisquare(observed, wanted).pvalue


class ScriptLM(torch.nn.Module):
    """A causal LM that writes ``scripts[row]`` whatever the prompt (one token per position after it).

    The prompt's batch row ``i`` writes ``scripts[i]``; every prompt must have ``prompt_tokens`` tokens. Past the
    end of its script a row repeats the last token. The "KV cache" holds each row's script number, so rows that
    leave the batch, or are reordered, keep their scripts. ``batch_sizes`` records the rows of every forward.
    """

    def __init__(self, scripts, prompt_tokens, vocab_size):
        super().__init__()
        self.scripts = [torch.tensor(script) for script in scripts]
        self.start = prompt_tokens - 1
        self.vocab_size = vocab_size
        self.batch_sizes = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        rows = torch.arange(input_ids.shape[0]) if cache is None else cache
        self.batch_sizes.append(input_ids.shape[0])
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab_size)
        for row, script_number in enumerate(rows.tolist()):
            script = self.scripts[script_number]
            index = min(int(position_ids[row, -1]) - self.start, len(script) - 1)
            logits[row, 0, script[index]] = 20.0
        return SimpleNamespace(logits=logits, cache=rows)


def scripted(*texts, eos=False, prompt="a"):
    """A ScriptLM writing ``texts`` (one per row; EOS after each when ``eos``) with the tiny BPE tokenizer."""
    tokenizer = make_tokenizer()
    scripts = [tokenizer.encode(text) + ([tokenizer.eos_token_id] if eos else []) for text in texts]
    return ScriptLM(scripts, len(tokenizer.encode(prompt)), len(tokenizer)), tokenizer


# ---- parity with transformers ---------------------------------------------------------------------------


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["batch1", "ragged"])
def test_greedy_is_token_identical_to_transformers(tiny, prompts):
    model, tokenizer = tiny
    results = decoders.generate(prompts, model=tiny, max_new_tokens=24)
    assert [r.generated_ids for r in results] == hf_greedy(model, tokenizer, prompts, 24)
    assert [r.prompt_ids for r in results] == tokenizer(prompts)["input_ids"]


def test_one_forward_pass_of_one_new_token_per_step(tiny):
    model, _ = tiny
    calls = []

    def record(module, args, kwargs):
        calls.append((tuple(kwargs["input_ids"].shape), kwargs.get("logits_to_keep")))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        results = decoders.generate(PROMPTS, "top_k", model=tiny, max_new_tokens=6, seed=0)
    finally:
        handle.remove()
    width = max(len(r.prompt_ids) for r in results)
    steps = max(len(r.generated_ids) for r in results)
    assert calls == [((3, width), 1)] + [((3, 1), 1)] * (steps - 1)


def test_rows_with_the_same_prompt_share_one_prompt_pass(tiny):
    """Repeated prompts (many strategies or seeds on one prompt) are read once; each row's tokens, scores and
    log-probabilities are those of a call where every row reads its prompt itself."""
    model, _ = tiny
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[0], PROMPTS[1]]
    strategies = ["greedy", "balanced", "high_temperature", "balanced", "top_k"]
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a, k: calls.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    try:
        shared = decoders.generate(prompts, strategies, model=tiny, max_new_tokens=8, seed=[3, 4, 5, 6, 7], logprobs=2)
    finally:
        handle.remove()
    assert calls[0][0] == 2 and all(rows == 5 for rows, _ in calls[1:])  # two distinct prompts, then every row
    for row, result in enumerate(shared):  # each row next to the other prompt (same padding, nothing to share)
        other = PROMPTS[1] if prompts[row] == PROMPTS[0] else PROMPTS[0]
        alone = decoders.generate(
            [prompts[row], other], [strategies[row], "greedy"], model=tiny, max_new_tokens=8, seed=[3 + row, 0], logprobs=2
        )[0]  # fmt: skip
        assert result.generated_ids == alone.generated_ids
        assert [[(t.token_id, t.raw) for t in step.top] for step in result.logprobs] == [
            [(t.token_id, pytest.approx(t.raw, abs=1e-5)) for t in step.top] for step in alone.logprobs
        ]


# ---- seeds and the sampled distribution -----------------------------------------------------------------


def test_same_seed_same_tokens_and_rows_independent_of_the_batch(tiny):
    """Guaranteed: a row's tokens depend only on its prompt, strategy and seed. With identical prompts the
    padding, and so the model's numerics, are the same for every row, whatever the batch size."""
    prompt, strategy = "Once upon a time", "high_temperature"
    alone = decoders.generate(prompt, strategy, model=tiny, max_new_tokens=12, seed=[7]).generated_ids
    assert decoders.generate(prompt, strategy, model=tiny, max_new_tokens=12, seed=[7]).generated_ids == alone
    batch = decoders.generate([prompt] * 3, strategy, model=tiny, max_new_tokens=12, seed=[1, 7, 2])
    assert batch[1].generated_ids == alone
    assert batch[0].generated_ids != batch[2].generated_ids  # different seeds, different draws
    by_int = decoders.generate([prompt] * 2, strategy, model=tiny, max_new_tokens=12, seed=6)  # rows use 6 and 7
    assert by_int[1].generated_ids == alone


@pytest.mark.parametrize(
    "strategy, table",
    [
        ("pure_sampling", TABLE),
        ({"processors": [{"kind": "top_k", "top_k": 2}], "selector": {"kind": "sample"}}, TABLE_TOP_K_2),
        ({"processors": [{"kind": "top_p", "top_p": 0.75}], "selector": {"kind": "sample"}}, TABLE_TOP_P_075),
    ],
    ids=["pure", "top_k_2", "top_p_0.75"],
)
def test_sequence_frequencies_match_exact_probabilities(strategy, table):
    draws, max_new_tokens = 5000, 3
    results = decoders.generate(
        ["a"] * draws, strategy, model=(TableLM(TABLE), table_tokenizer()), max_new_tokens=max_new_tokens, seed=0
    )
    counts = Counter(tuple(r.generated_ids) for r in results)
    expected = sequence_probabilities(table, A, max_new_tokens)
    assert set(counts) <= set(expected), "a sequence the truncation forbids was generated"
    assert math.isclose(sum(expected.values()), 1.0)
    # seeded, so it cannot flake; a wrong distribution gives p-values many orders of magnitude smaller
    assert chi_square_pvalue(counts, expected, draws) > 1e-3


# ---- streaming, stopping, EOS ---------------------------------------------------------------------------


def test_stream_texts_concatenate_to_the_final_text(tiny):
    events = list(decoders.stream(PROMPTS, "high_temperature", model=tiny, max_new_tokens=16, seed=3))
    final = events[-1]
    assert final.results is not None and all(e.results is None for e in events[:-1])
    assert final.finished == [True] * 3 and final.token_ids == [None] * 3 and final.texts == [""] * 3
    for row, result in enumerate(final.results):
        assert "".join(e.texts[row] for e in events) == result.text
        assert [e.token_ids[row] for e in events[:-1] if e.token_ids[row] is not None] == result.generated_ids


def test_stream_emits_multibyte_characters_only_when_complete():
    model, tokenizer = scripted("héllo wörld €!")
    events = list(decoders.stream("a", model=(model, tokenizer), max_new_tokens=15))
    texts = [e.texts[0] for e in events[:-1]]
    assert "".join(texts) == events[-1].results.text == "héllo wörld €!"
    assert not any("\ufffd" in t for t in texts)
    assert texts[1:3] == ["", "é"] and texts[11:14] == ["", "", "€"]


def test_eos_ends_a_row_and_finished_rows_are_no_longer_reported():
    model, tokenizer = scripted("Hi", "Hello world", eos=True)
    events = list(decoders.stream(["a", "b"], model=(model, tokenizer), max_new_tokens=10))
    first, second = events[-1].results
    assert (first.text, first.finish_reason) == ("Hi", "eos")
    assert first.generated_ids == tokenizer.encode("Hi") + [tokenizer.eos_token_id]
    assert (second.text, second.finish_reason) == ("Hello world", "eos")
    done_at = len(first.generated_ids) - 1
    assert events[done_at].finished == [True, False] and events[done_at].token_ids[0] == tokenizer.eos_token_id
    assert all(e.token_ids[0] is None and e.texts[0] == "" for e in events[done_at + 1 :])
    assert len(events) == len(second.generated_ids) + 1  # the loop ends as soon as every row has finished


def test_ignore_eos_runs_every_row_to_max_new_tokens():
    model, tokenizer = scripted("Hi", "Hello world", eos=True)
    results = decoders.generate(["a", "b"], model=(model, tokenizer), max_new_tokens=12, ignore_eos=True)
    assert [len(r.generated_ids) for r in results] == [12, 12]
    assert [r.finish_reason for r in results] == ["length", "length"]
    assert results[0].generated_ids[: len(tokenizer.encode("Hi")) + 1] == tokenizer.encode("Hi") + [tokenizer.eos_token_id]


def test_stop_strings_cut_the_text_and_end_the_row():
    model, tokenizer = scripted("Hello world. Bye", "Hello world. Bye", "Hello world. Bye")
    results = decoders.generate(["a", "b", "c"], model=(model, tokenizer), max_new_tokens=11, stop=[". ", "lo wo"])
    assert [(r.text, r.finish_reason) for r in results] == [("Hel", "stop")] * 3
    assert results[0].generated_ids == tokenizer.encode("Hello wor")  # the tokens up to the stop are kept

    never = decoders.generate("a", model=(model, tokenizer), max_new_tokens=11, stop="xyz")
    assert (never.text, never.finish_reason) == ("Hello world. Bye", "length")


def test_streaming_never_shows_text_that_a_stop_string_cuts():
    model, tokenizer = scripted("Hello world. Bye")
    events = list(decoders.stream("a", model=(model, tokenizer), max_new_tokens=11, stop="world."))
    texts = [e.texts[0] for e in events]
    assert "".join(texts) == events[-1].results.text == "Hello "
    assert events[-1].results.finish_reason == "stop"


def test_max_new_tokens_zero_returns_empty_text_without_running_the_model():
    model, tokenizer = scripted("Hi")
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(args))
    results = decoders.generate("a", model=(model, tokenizer), max_new_tokens=0)
    assert (results.text, results.generated_ids, results.finish_reason) == ("", [], "length")
    [event] = decoders.stream("a", model=(model, tokenizer), max_new_tokens=0)
    assert event.results.text == "" and calls == []


# ---- trace ----------------------------------------------------------------------------------------------


def test_trace_records_every_stage_and_the_chosen_token(tiny):
    strategy = {
        "processors": [
            {"kind": "temperature", "temperature": 0.7},
            {"kind": "top_k", "top_k": 5},
            {"kind": "top_p", "top_p": 0.8},
        ],
        "selector": {"kind": "sample"},
    }
    model, tokenizer = tiny
    results = decoders.generate(PROMPTS[:2], strategy, model=tiny, max_new_tokens=5, seed=0, trace=True, top=10)
    for row, result in enumerate(results):
        assert [record.step for record in result.steps] == list(range(len(result.generated_ids)))
        for record, token in zip(result.steps, result.generated_ids):
            assert record.row == row
            assert [stage.stage for stage in record.stages] == ["model", "temperature", "top_k", "top_p"]
            survivors = [stage.survivors for stage in record.stages]
            assert survivors[0] == survivors[1] == model.config.vocab_size
            assert 1 <= survivors[3] <= survivors[2] == 5
            for stage in record.stages:
                probabilities = [c.probability for c in stage.top]
                assert sum(probabilities) <= 1 + 1e-6 and probabilities == sorted(probabilities, reverse=True)
                assert len(stage.top) == min(10, stage.survivors) and stage.entropy >= 0
            for stage in record.stages[2:]:  # every survivor is listed: the entropy is theirs
                entropy = -sum(c.probability * math.log(c.probability) for c in stage.top if c.probability > 0)
                assert stage.entropy == pytest.approx(entropy, abs=1e-5)
            assert math.isclose(sum(c.probability for c in record.stages[-1].top), 1, rel_tol=1e-5)
            assert record.chosen.token_id == token and record.chosen.token == tokenizer.decode([token])
            final = {c.token_id: c.probability for c in record.stages[-1].top}
            assert math.isclose(record.chosen.probability, final[token], rel_tol=1e-5)
    assert decoders.generate("Once", model=tiny, max_new_tokens=2)[0].steps is None


def test_trace_in_stream_events(gpt2):
    events = list(decoders.stream(PROMPTS[:2], "greedy", model=gpt2, max_new_tokens=3, trace=True))
    assert all(e.records[row].step == e.step for e in events[:-1] for row in range(2))
    assert events[-1].results[0].steps == [e.records[0] for e in events[:-1]]
    assert [s.stage for s in events[0].records[0].stages] == ["model"]
    assert next(decoders.stream("Once", model=gpt2, max_new_tokens=1)).records is None


# ---- models, prompts and results ------------------------------------------------------------------------


def test_generations_read_the_only_result_and_refuse_to_guess(gpt2):
    one = decoders.generate("Once", model=gpt2, max_new_tokens=3)
    assert one.text == one[0].text and one.generated_ids == one[0].generated_ids and one.finish_reason == "length"
    two = decoders.generate(["Once", "The"], model=gpt2, max_new_tokens=3)
    assert two[1].prompt == "The"
    with pytest.raises(GenerationError, match=r"2 results.*index"):
        _ = two.text


def test_model_by_folder_and_as_loaded_model(tiny_gpt2_dir, gpt2):
    expected = decoders.generate("Once upon", model=gpt2, max_new_tokens=5).generated_ids
    assert decoders.generate("Once upon", model=str(tiny_gpt2_dir), max_new_tokens=5).generated_ids == expected
    loaded = decoders.load_model(tiny_gpt2_dir)
    assert decoders.generate("Once upon", model=loaded, max_new_tokens=5).generated_ids == expected


def test_chat_applies_the_template(gpt2):
    model, tokenizer = gpt2
    chat_tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    chat_tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    result = decoders.generate("Hi", model=(model, chat_tokenizer), max_new_tokens=2, chat=True)[0]
    assert result.prompt == "Hi" and result.prompt_ids == chat_tokenizer.encode("<user>Hi<assistant>")


@pytest.mark.parametrize(
    "prompts, options, words",
    [
        ("", {}, r"the prompt is empty"),
        (["Once", ""], {}, r"prompt 1 is empty"),
        ([], {}, r"no prompts"),
        ("Once " * 130, {}, r"has \d+ tokens.*context length of 128.*the prompt alone fills the context: shorten it by at least \d+ tokens"),
        (
            "Once",
            {"max_new_tokens": 128},
            r"1 token and max_new_tokens is 128: 129 > .* 128 tokens.*lower max_new_tokens to 127",
        ),
        ("Once", {"max_new_tokens": -1}, r"max_new_tokens must be .*≥ 0, got -1"),
        (["a", "b", "c"], {"seed": [1, 2]}, r"2 seeds for 3 prompts.*one seed per prompt"),
        ("Once", {"stop": ["", "x"]}, r"stop strings must be non-empty"),
        ("Once", {"stop": 5}, r"stop must be a string or a list of strings, got int"),
        ("Once", {"chat": True}, r"chat template"),
        ("Once", {"seed": 2**64}, r"seed must be from 0 to 2\*\*64 - 1"),
        ("Once", {"seed": "abc"}, r"seed must be a whole number or a list of them, got 'abc'"),
        ("Once", {"seed": 1.5}, r"seed must be a whole number, got 1.5"),
        (["a", "b"], {"seed": [1, True]}, r"seed 1 must be a whole number, got True"),
        (None, {}, r"prompts must be a string or a list of strings, got NoneType"),
        (b"hello", {}, r"the prompt is bytes, not text: decode it first"),
        (["a", b"b"], {}, r"prompt 1 is bytes"),
        ("caf\udce9", {}, r"the prompt is not valid text: character 3 is an undecodable byte"),
    ],
)
def test_bad_input_is_a_clear_generation_error(gpt2, prompts, options, words):
    with pytest.raises(GenerationError, match=words):
        decoders.generate(prompts, model=gpt2, **options)
    with pytest.raises(GenerationError, match=words):
        decoders.stream(prompts, model=gpt2, **options)  # at once, before any event is taken


def test_whitespace_is_a_prompt_and_max_new_tokens_may_fill_the_context(gpt2):
    assert len(decoders.generate(" ", model=gpt2, max_new_tokens=2).generated_ids) == 2
    assert len(decoders.generate("Once", model=gpt2, max_new_tokens=127).generated_ids) <= 127


def test_bad_models_are_clear_errors():
    with pytest.raises(GenerationError, match="model must be"):
        decoders.generate("a", model=42)
    with pytest.raises(GenerationError, match=r"needs a causal LM first and its tokenizer second; got \(str, int\)"):
        decoders.generate("a", model=("gpt2", 2))
    with pytest.raises(StrategyError, match="a strategy is a preset name, .* got int"):
        decoders.generate("a", 5, model=(TableLM(TABLE), table_tokenizer()))

    class NoCache(TableLM):
        def forward(self, input_ids, **kwargs):
            return SimpleNamespace(logits=self.log_table[input_ids[:, -1:]], cache=None)

    with pytest.raises(GenerationError, match="no KV cache"):
        decoders.generate("a", model=(NoCache(TABLE), table_tokenizer()), max_new_tokens=2)
