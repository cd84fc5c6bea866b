"""Mixed-strategy batches and finished rows leaving the batch, through the public API.

A mixed call (``generate(prompts, strategy=[s_0, …])``) must give row ``i`` exactly what a call with ``s_i`` for
every prompt gives it (tokens, text, score, log-probabilities, trace), seeds included; rows that end early leave
the batch (the model then runs on fewer rows) without changing any output. Where rows leave, the model's
forward runs on fewer rows, which a real model may round differently (the CPU's kernels): bit-for-bit checks use
the table and scripted toy models, whose rows never depend on the batch; the tiny transformers models check the
tokens, and the log-probabilities up to that rounding.
"""

from __future__ import annotations

import copy

import pytest

import decoders
from decoders import GenerationError, StrategyError
from tests.test_driver import EOS, TABLE, TableLM, hf_greedy, load_pair, scripted, table_tokenizer

PROMPTS = ["The quick brown fox jumps", "Once", "Decoding strategies choose", "A", "Hello there, how are", "In 1901"]
PENALTIES = {
    "processors": [
        {"kind": "repetition_penalty", "repetition_penalty": 1.3},
        {"kind": "presence_frequency", "presence_penalty": 0.5, "frequency_penalty": 0.3},
        {"kind": "no_repeat_ngram", "no_repeat_ngram_size": 2},
    ],
    "selector": {"kind": "sample"},
}
MIX = ["greedy", "top_k", "high_temperature", PENALTIES, "top_p", "balanced"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """A tiny random model (GPT-2 and Llama shapes) and its tokenizer."""
    return load_pair(tiny_model_dir)


def forward_batch_sizes(model):
    """A list that fills with the batch size of every forward pass of ``model``, and the hook's handle."""
    sizes = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    return sizes, handle


def same_result(mixed, single):
    assert mixed.generated_ids == single.generated_ids
    assert mixed.text == single.text
    assert mixed.finish_reason == single.finish_reason
    assert mixed.score == single.score
    assert mixed.logprobs == single.logprobs
    assert mixed.steps == single.steps


# ---- mixed batches ---------------------------------------------------------------------------------------


def test_each_row_of_a_mixed_batch_is_what_its_strategy_gives_it_alone(tiny):
    options = dict(model=tiny, max_new_tokens=10, seed=11, logprobs=2, trace=True, top=3, ignore_eos=True)
    mixed = decoders.generate(PROMPTS, MIX, **options)
    for row, strategy in enumerate(MIX):
        single = decoders.generate(PROMPTS, strategy, **options)
        same_result(mixed[row], single[row])
    assert len({tuple(r.generated_ids) for r in mixed}) > 1


def test_rows_of_one_strategy_may_be_scattered_and_seeds_may_be_a_list(tiny):
    strategies = ["top_k", "greedy", "top_k", "low_temperature", "greedy", "top_k"]
    seeds = [5, 9, 5, 2, 0, 7]
    mixed = decoders.generate(PROMPTS, strategies, model=tiny, max_new_tokens=8, seed=seeds)
    for row, strategy in enumerate(strategies):
        single = decoders.generate(PROMPTS, strategy, model=tiny, max_new_tokens=8, seed=seeds)
        assert mixed[row].generated_ids == single[row].generated_ids and mixed[row].score == single[row].score


def test_a_mixed_stream_reports_every_row_and_ends_with_the_results(tiny):
    events = list(decoders.stream(PROMPTS[:3], ["top_k", "greedy", PENALTIES], model=tiny, max_new_tokens=6, seed=1))
    results = events[-1].results
    for row in range(3):
        assert "".join(e.texts[row] for e in events) == results[row].text
        assert [e.token_ids[row] for e in events[:-1] if e.token_ids[row] is not None] == results[row].generated_ids
    assert results[1].generated_ids == decoders.generate(PROMPTS[:3], model=tiny, max_new_tokens=6)[1].generated_ids


def test_mixed_contrastive_and_best_of_rows_equal_their_single_strategy_runs(tiny):
    contrastive = [
        {"search": {"kind": "contrastive", "penalty_alpha": 0.6, "top_k": 3}},
        {"processors": [{"kind": "repetition_penalty", "repetition_penalty": 1.5}],
         "search": {"kind": "contrastive", "penalty_alpha": 0.6, "top_k": 3}},
    ]  # fmt: skip
    best_of = [
        {"processors": [{"kind": "top_k", "top_k": 5}], "selector": {"kind": "sample"}, "search": {"kind": "best_of", "n": 3}},
        {"selector": {"kind": "sample"}, "search": {"kind": "best_of", "n": 3}},
    ]
    for strategies in (contrastive, best_of):
        mixed = decoders.generate(PROMPTS[:2], strategies, model=tiny, max_new_tokens=7, seed=4)
        for row, strategy in enumerate(strategies):
            single = decoders.generate(PROMPTS[:2], strategy, model=tiny, max_new_tokens=7, seed=4)[row]
            assert [h.generated_ids for h in mixed[row].alternatives] == [h.generated_ids for h in single.alternatives]
            assert mixed[row].score == single.score


def test_speculative_rows_with_different_processors_equal_their_single_strategy_runs(tiny):
    lookup = {"kind": "speculative", "prompt_lookup_num_tokens": 3}
    penalty = {"kind": "repetition_penalty", "repetition_penalty": 1.3}
    greedy = [{"search": lookup}, {"processors": [penalty], "search": lookup}]
    sampled = [
        {"processors": [{"kind": "top_k", "top_k": 5}], "selector": {"kind": "sample"}, "search": lookup},
        {"processors": [{"kind": "temperature", "temperature": 1.5}], "selector": {"kind": "sample"}, "search": lookup},
    ]
    prompts = ["a b c a b c a b", PROMPTS[0]]  # the first one repeats itself: drafts get accepted
    for strategies in (greedy, sampled):
        options = {"model": tiny, "max_new_tokens": 9, "seed": 2, "logprobs": 1, "trace": True}
        mixed = decoders.generate(prompts, strategies, **options)
        for row, strategy in enumerate(strategies):
            single = decoders.generate(prompts, strategy, **options)[row]
            assert mixed[row].generated_ids == single.generated_ids and mixed[row].score == pytest.approx(single.score)
            stages = [[stage.stage for stage in record.stages] for record in mixed[row].steps]
            assert stages == [["model", *(p["kind"] for p in strategy.get("processors", []))]] * len(single.steps)
            assert [r.chosen.token_id for r in mixed[row].steps] == mixed[row].generated_ids
            # the other row drafts otherwise in the single run, so the verifying passes differ in shape: rounding only
            raw = [t.chosen.raw for t in single.logprobs]
            assert [t.chosen.raw for t in mixed[row].logprobs] == pytest.approx(raw, rel=1e-4)
    with pytest.raises(StrategyError, match="different selectors .greedy, sample.* give every row the same selector"):
        decoders.generate(prompts, [greedy[0], sampled[0]], model=tiny, max_new_tokens=2)


def test_beam_search_rows_with_different_processors_share_a_batch(tiny):
    beam = {"kind": "beam", "num_beams": 2}
    strategies = [{"search": beam}, {"processors": [{"kind": "no_repeat_ngram", "no_repeat_ngram_size": 2}], "search": beam}]
    mixed = decoders.generate(PROMPTS[:2], strategies, model=tiny, max_new_tokens=8)
    for row, strategy in enumerate(strategies):
        single = decoders.generate(PROMPTS[:2], strategy, model=tiny, max_new_tokens=8)[row]
        assert [h.generated_ids for h in mixed[row].alternatives] == [h.generated_ids for h in single.alternatives]


def test_identical_strategies_in_a_list_are_one_strategy(tiny):
    listed = decoders.generate(PROMPTS[:3], ["top_k", "top_k", "top_k"], model=tiny, max_new_tokens=6, seed=3)
    plain = decoders.generate(PROMPTS[:3], "top_k", model=tiny, max_new_tokens=6, seed=3)
    assert [r.generated_ids for r in listed] == [r.generated_ids for r in plain]


@pytest.mark.parametrize(
    "strategies, words",
    [
        (["greedy", "top_k"], ["2 strategies for 3 prompts", "one strategy per prompt"]),
        (["greedy", "top_k", "top_k", "greedy"], ["4 strategies for 3 prompts"]),
        (["greedy", "beam_search", "top_k"], ["different searches", "single (rows 0, 2); beam (row 1)"]),
        (["contrastive", "greedy", "greedy"], ["contrastive (row 0); single (rows 1-2)"]),
    ],
)
def test_bad_strategy_lists_are_clear_errors(gpt2_pair, strategies, words):
    with pytest.raises(GenerationError) as error:
        decoders.generate(PROMPTS[:3], strategies, model=gpt2_pair, max_new_tokens=2)
    for word in words:
        assert word in str(error.value)


def test_a_search_that_needs_one_selector_refuses_rows_with_different_ones(gpt2_pair):
    beam = {"kind": "beam", "num_beams": 2}
    strategies = [{"search": beam}, {"selector": {"kind": "sample"}, "search": beam}]
    with pytest.raises(StrategyError, match="different selectors .*greedy, sample"):
        decoders.generate(PROMPTS[:2], strategies, model=gpt2_pair, max_new_tokens=2)
    with pytest.raises(StrategyError, match="strategy 1: unknown preset|strategy 1: 'nope'"):
        decoders.generate(PROMPTS[:2], ["greedy", "nope"], model=gpt2_pair, max_new_tokens=2)
    misspelt = {"search": {"kind": "speculative", "draft_modle": "distilgpt2"}}
    with pytest.raises(StrategyError, match=r"^strategy 1: search\.speculative\.draft_modle: Extra inputs are not permitted$"):
        decoders.generate(PROMPTS[:2], ["greedy", misspelt], model=gpt2_pair, max_new_tokens=2)


@pytest.fixture(scope="module")
def gpt2_pair(tiny_gpt2_dir):
    return load_pair(tiny_gpt2_dir)


# ---- finished rows leave the batch ----------------------------------------------------------------------


def test_rows_that_end_leave_the_batch_and_events_still_report_every_row():
    model, tokenizer = scripted("Hi", "Hello world, again", "Hello", eos=True)
    events = list(decoders.stream(["a", "b", "c"], model=(model, tokenizer), max_new_tokens=12, logprobs=1))
    results = events[-1].results
    lengths = [len(r.generated_ids) for r in results]
    assert [r.finish_reason for r in results] == ["eos"] * 3 and lengths[0] < lengths[2] < lengths[1]
    assert [r.text for r in results] == ["Hi", "Hello world, again", "Hello"]
    # the prompt, then one forward per step on the rows still generating
    live = [sum(length > step for length in lengths) for step in range(1, max(lengths))]
    assert model.batch_sizes == [3] + live and live[-1] == 1
    for step, event in enumerate(events[:-1]):
        assert event.finished == [length <= step + 1 for length in lengths]
        assert [t is None for t in event.token_ids] == [length <= step for length in lengths]
    assert [len(r.logprobs) for r in results] == lengths


def test_stop_strings_end_rows_that_then_leave_the_batch():
    model, tokenizer = scripted("Hello world. Bye", "Hi. Then more", "Hello world and on and on")
    results = decoders.generate(["a", "b", "c"], model=(model, tokenizer), max_new_tokens=12, stop=". ", trace=True)
    assert [(r.text, r.finish_reason) for r in results[:2]] == [("Hello world", "stop"), ("Hi", "stop")]
    assert results[2].text.startswith("Hello world and on") and results[2].finish_reason == "length"
    assert min(model.batch_sizes) == 1
    assert [len(r.steps) for r in results] == [len(r.generated_ids) for r in results]
    assert all(record.row == row for row, r in enumerate(results) for record in r.steps)


GREEDY_NO_REPEAT = {"processors": [{"kind": "no_repeat_ngram", "no_repeat_ngram_size": 1}]}
TABLE_STRATEGIES = [
    "pure_sampling",
    {"processors": [{"kind": "top_p", "top_p": 0.75}], "selector": {"kind": "sample"}},
    {"processors": [{"kind": "repetition_penalty", "repetition_penalty": 1.5}], "selector": {"kind": "sample"}},
]


@pytest.mark.parametrize("strategy", TABLE_STRATEGIES, ids=["pure", "top_p", "penalty"])
def test_rows_that_leave_the_batch_write_exactly_what_they_write_when_every_row_runs_to_the_end(strategy):
    """The table model gives every row the same numbers whatever the batch, so everything compares bit for bit:
    a row that ends at EOS is the prefix of what it writes with EOS ignored (where no row leaves), its
    log-probabilities and trace included, its score is the sum of its tokens' processed log-probabilities, and
    the stream reports every row."""
    model, tokenizer = TableLM(TABLE), table_tokenizer()
    prompts = ["a", "b c", "c", "a b", "b", "c c a", "a", "b"]
    options = dict(model=(model, tokenizer), max_new_tokens=12, seed=3, logprobs=2, trace=True, top=3)
    full = decoders.generate(prompts, strategy, ignore_eos=True, **options)
    sizes, handle = forward_batch_sizes(model)
    try:
        events = list(decoders.stream(prompts, strategy, **options))
    finally:
        handle.remove()
    ended = events[-1].results
    lengths = [len(r.generated_ids) for r in ended]
    for whole, cut in zip(full, ended):
        n = len(cut.generated_ids)
        assert cut.generated_ids == cut_at(whole.generated_ids, {EOS})
        assert cut.finish_reason == ("eos" if cut.generated_ids[-1] == EOS else "length")
        assert cut.logprobs == whole.logprobs[:n] and cut.steps == whole.steps[:n]
        total = 0.0
        for step in cut.logprobs:
            total += step.chosen.processed
        assert cut.score == total
    for step, event in enumerate(events[:-1]):
        assert event.finished == [n <= step + 1 for n in lengths]
        assert [t is None for t in event.token_ids] == [n <= step for n in lengths]
    assert len(set(lengths)) >= 3  # rows end at different steps
    # the prompts' pass reads each distinct prompt once; then every live row, fewer as rows end
    assert sizes == [len(set(prompts))] + [sum(n > step for n in lengths) for step in range(1, max(lengths))]


def with_eos(pair, eos_ids):
    """A copy of ``pair`` whose model ends a row at any of ``eos_ids``."""
    model, tokenizer = copy.deepcopy(pair)
    model.generation_config.eos_token_id = sorted(eos_ids)
    return model, tokenizer


def cut_at(ids, eos_ids):
    """``ids`` up to and including the first of ``eos_ids``."""
    ends = [step for step, token in enumerate(ids) if token in eos_ids]
    return ids[: ends[0] + 1] if ends else ids


def eos_at_different_steps(rows, tokenizer):
    """End-of-sequence ids (the tokenizer's, and one token of each of rows 0, 2 and 4) that end rows at different
    steps and leave at least one row running to the end."""
    for steps in [(2, 5, 8), (1, 4, 7), (3, 6, 9)]:
        eos_ids = {tokenizer.eos_token_id} | {rows[row][step] for row, step in zip((0, 2, 4), steps)}
        lengths = [len(cut_at(ids, eos_ids)) for ids in rows]
        if len({n for n, ids in zip(lengths, rows) if n < len(ids)}) >= 2 and max(lengths) == len(rows[0]):
            return eos_ids
    raise AssertionError("no tokens end rows at different steps: change the prompts")


def same_up_to_rounding(cut, whole):
    """Equal tokens; log-probabilities and score equal up to the model's rounding at another batch size."""
    n = len(cut.generated_ids)
    assert [(s.chosen.token_id, [t.token_id for t in s.top]) for s in cut.logprobs] == [
        (s.chosen.token_id, [t.token_id for t in s.top]) for s in whole.logprobs[:n]
    ]
    assert [s.chosen.raw for s in cut.logprobs] == pytest.approx([s.chosen.raw for s in whole.logprobs[:n]], abs=1e-4)
    assert cut.score == pytest.approx(sum(s.chosen.processed for s in whole.logprobs[:n]), abs=1e-3)


@pytest.mark.parametrize(
    "strategy",
    [GREEDY_NO_REPEAT, "top_k", PENALTIES, {"search": {"kind": "contrastive", "penalty_alpha": 0.6, "top_k": 3}}],
    ids=["greedy", "top_k", "penalties", "contrastive"],
)
def test_rows_that_leave_a_transformers_model_batch_keep_the_tokens_they_write_when_no_row_leaves(tiny, strategy):
    """A forward over fewer rows may round differently (the CPU's matrix kernels: the tiny models differ in the
    last bits at 5 rows against 6, SmolLM2 by ~1e-4 of a logit), as any batch of another size does; the tokens
    stay those of the run where every row runs to the end (and transformers' for greedy), and the
    log-probabilities agree up to that rounding."""
    options = dict(max_new_tokens=14, seed=5, logprobs=2)
    full = decoders.generate(PROMPTS, strategy, model=tiny, ignore_eos=True, **options)
    eos_ids = eos_at_different_steps([r.generated_ids for r in full], tiny[1])
    model, tokenizer = with_eos(tiny, eos_ids)
    sizes, handle = forward_batch_sizes(model)
    try:
        ended = decoders.generate(PROMPTS, strategy, model=(model, tokenizer), **options)
    finally:
        handle.remove()
    for whole, cut in zip(full, ended):
        assert cut.generated_ids == cut_at(whole.generated_ids, eos_ids)
        assert cut.finish_reason == ("eos" if len(cut.generated_ids) < len(whole.generated_ids) else "length")
        same_up_to_rounding(cut, whole)
    if strategy is GREEDY_NO_REPEAT:
        theirs = hf_greedy(model, tokenizer, PROMPTS, 14, no_repeat_ngram_size=1)
        assert [r.generated_ids for r in ended] == [cut_at(ids, eos_ids) for ids in theirs]
    assert sizes[-1] < sizes[1]  # rows did leave (the last forward ran on fewer rows than the first step)


def test_rows_of_a_mixed_batch_leave_and_the_others_keep_their_strategies(tiny):
    strategies = [GREEDY_NO_REPEAT, "top_k", PENALTIES, "top_p", "greedy", "balanced"]
    options = dict(max_new_tokens=12, seed=2, logprobs=0)
    full = decoders.generate(PROMPTS, strategies, model=tiny, ignore_eos=True, **options)
    model, tokenizer = with_eos(tiny, eos_at_different_steps([r.generated_ids for r in full], tiny[1]))
    ended = decoders.generate(PROMPTS, strategies, model=(model, tokenizer), **options)
    for row, strategy in enumerate(strategies):
        alone = decoders.generate(PROMPTS, strategy, model=(model, tokenizer), **options)[row]
        assert ended[row].generated_ids == alone.generated_ids
        assert ended[row].generated_ids == full[row].generated_ids[: len(alone.generated_ids)]
        same_up_to_rounding(ended[row], full[row])


def test_compare_runs_the_strategies_of_one_search_in_one_batch(capsys, tiny_gpt2_dir, gpt2_pair, monkeypatch):
    from tests.test_cli import run_json

    calls = []
    real = decoders.generate
    monkeypatch.setattr(
        decoders, "generate", lambda prompts, *args, **kw: calls.append(len(prompts)) or real(prompts, *args, **kw)
    )
    names = ["greedy", "top_k", "top_p", "beam_search", "balanced"]
    args = ["--model", str(tiny_gpt2_dir), "--max-new-tokens", "6", "--seed", "4"]
    data = run_json(capsys, "compare", "The quick", *args, *[a for name in names for a in ("-s", name)])
    assert sorted(calls) == [1, 4]  # beam search on its own, the four single-search strategies in one call
    for row in data["results"]:
        alone = real("The quick", row["strategy"], model=gpt2_pair, max_new_tokens=6, seed=4)
        assert row["generated_ids"] == alone.generated_ids
