"""The engine: requests join a running batch at any step and get exactly what they get alone."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import decoders
from decoders import Engine, GenerationError, StrategyError
from tests.tiny_models import ModelWrapper

PROMPTS = [
    "The quick brown fox",
    "Once upon a time there was a small model that wanted",
    "Decoding",
    "Artificial intelligence is transforming the world of language and",
]
SAMPLED = {"processors": [{"kind": "top_k", "top_k": 20}, {"kind": "temperature", "temperature": 1.3}], "selector": {"kind": "sample"}}
PENALISED = {"processors": [{"kind": "repetition_penalty", "repetition_penalty": 1.3}, {"kind": "min_p", "min_p": 0.05}], "selector": {"kind": "sample"}}


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return decoders.load_model(str(tiny_model_dir))


def solo(loaded, prompt, strategy, **options):
    return decoders.generate(prompt, strategy, model=loaded, **options)[0]


def run_to_end(engine, arrivals):
    """Step the engine, adding ``arrivals[step]`` (a list of (name, prompt, strategy, options)) before each step;
    returns {name: request id} and every step's events."""
    ids, events, step = {}, [], 0
    while step < len(arrivals) or engine.pending:
        for name, prompt, strategy, options in arrivals[step] if step < len(arrivals) else []:
            ids[name] = engine.add(prompt, strategy, **options)
        events.append(engine.step())
        step += 1
        assert step < 500, "the engine did not finish"
    return ids, events


def same(result, expected):
    assert result.generated_ids == expected.generated_ids
    assert result.text == expected.text
    assert result.finish_reason == expected.finish_reason
    assert result.score == pytest.approx(expected.score, abs=1e-4)


def test_requests_joining_at_different_steps_equal_their_solo_runs(loaded):
    """Ragged prompts (longer and shorter than the running batch), several strategies and seeds, rows that end at
    different steps (lengths, a stop string), joining at steps 0, 1, 3 and 6."""
    requests = {
        "greedy": (PROMPTS[0], "greedy", {"max_new_tokens": 12}),
        "sampled": (PROMPTS[1], SAMPLED, {"seed": 3, "max_new_tokens": 20}),
        "short": (PROMPTS[2], SAMPLED, {"seed": 3, "max_new_tokens": 4}),
        "penalised": (PROMPTS[3], PENALISED, {"seed": 11, "max_new_tokens": 16}),
        "stop": (PROMPTS[0], SAMPLED, {"seed": 5, "max_new_tokens": 24, "stop": ["e"]}),
        "same prompt": (PROMPTS[1], SAMPLED, {"seed": 4, "max_new_tokens": 9}),
    }
    arrivals = [[], [], [], [], [], [], []]
    for step, name in zip([0, 0, 1, 3, 3, 6], requests):
        arrivals[step].append((name, *requests[name]))
    engine = Engine(loaded)
    ids, events = run_to_end(engine, arrivals)
    for name, (prompt, strategy, options) in requests.items():
        same(engine.result(ids[name]), solo(loaded, prompt, strategy, **options))
    assert engine.result(ids["stop"]).finish_reason in ("stop", "length")
    lengths = {len(engine.result(ids[name]).generated_ids) for name in requests}
    assert len(lengths) > 2  # the rows really ended at different steps


@pytest.mark.parametrize(
    "strategy",
    [
        {"search": {"kind": "beam", "num_beams": 3, "num_return_sequences": 2}},
        {"search": {"kind": "contrastive", "penalty_alpha": 0.6, "top_k": 3}},
        {"selector": {"kind": "sample"}, "search": {"kind": "best_of", "n": 3}},
        {"selector": {"kind": "sample"}, "search": {"kind": "stochastic_beam", "num_beams": 3}},
        {"search": {"kind": "speculative", "prompt_lookup_num_tokens": 4}},
        {"processors": [{"kind": "repetition_penalty", "repetition_penalty": 1.2}], "search": {"kind": "dola"}},
    ],
    ids=["beam", "contrastive", "best_of", "stochastic_beam", "speculative", "dola"],
)
def test_every_search_runs_through_the_engine_beside_joining_requests(loaded, strategy):
    """A request of each search joins a running batch at step 2 and equals its solo run (its alternatives too);
    the requests around it equal theirs."""
    options = {"seed": 7, "max_new_tokens": 10}
    arrivals = [
        [("first", PROMPTS[0], SAMPLED, {"seed": 1, "max_new_tokens": 14})],
        [],
        [("search", PROMPTS[1], strategy, options), ("beside", PROMPTS[3], "greedy", {"max_new_tokens": 6})],
    ]
    engine = Engine(loaded)
    ids, _ = run_to_end(engine, arrivals)
    expected = solo(loaded, PROMPTS[1], strategy, **options)
    result = engine.result(ids["search"])
    same(result, expected)
    assert [h.generated_ids for h in result.alternatives] == [h.generated_ids for h in expected.alternatives]
    same(engine.result(ids["first"]), solo(loaded, PROMPTS[0], SAMPLED, seed=1, max_new_tokens=14))
    same(engine.result(ids["beside"]), solo(loaded, PROMPTS[3], "greedy", max_new_tokens=6))


def test_events_stream_each_request_and_end_with_its_result(loaded):
    engine = Engine(loaded)
    first = engine.add(PROMPTS[0], "greedy", max_new_tokens=5)
    engine.step()
    second = engine.add(PROMPTS[2], SAMPLED, seed=2, max_new_tokens=3)
    seen = {first: [], second: []}
    last = {}
    while engine.pending:
        for event in engine.step():
            seen[event.request].append(event)
            last[event.request] = event
    assert [e.step for e in seen[second]] == [0, 1, 2]
    for request in (first, second):
        assert last[request].finished and last[request].result == engine.result(request)
        assert all(e.result is None for e in seen[request][:-1])
    # the texts of a request's events add up to its text
    assert "".join(e.text for e in seen[second]) == engine.result(second).text
    # a server lets finished requests go
    assert engine.pop_result(first) == last[first].result and engine.result(first) is None
    assert engine.pop_result(first) is None


def test_abort_frees_rows_and_changes_no_other_row(loaded):
    engine = Engine(loaded, max_rows=2)
    keep = engine.add(PROMPTS[1], SAMPLED, seed=9, max_new_tokens=12)
    gone = engine.add(PROMPTS[3], SAMPLED, seed=10, max_new_tokens=12)
    waiting = engine.add(PROMPTS[0], PENALISED, seed=12, max_new_tokens=8)
    for _ in range(3):
        events = engine.step()
    assert {e.request for e in events} == {keep, gone}  # two rows at most: the third waits
    assert engine.pending == 3
    assert engine.abort(gone)
    assert not engine.abort(gone)  # only once
    assert engine.pending == 2
    while engine.pending:
        assert all(e.request != gone for e in engine.step())
    assert engine.result(gone) is None
    assert not engine.abort(keep) and engine.result(keep) is not None  # a finished request keeps its result
    same(engine.result(keep), solo(loaded, PROMPTS[1], SAMPLED, seed=9, max_new_tokens=12))
    same(engine.result(waiting), solo(loaded, PROMPTS[0], PENALISED, seed=12, max_new_tokens=8))


def test_abort_of_a_queued_request_and_of_a_search_of_its_own(loaded):
    engine = Engine(loaded, max_rows=3)
    beam = engine.add(PROMPTS[0], {"search": {"kind": "beam", "num_beams": 3}}, max_new_tokens=10)
    queued = engine.add(PROMPTS[1], "greedy", max_new_tokens=4)
    engine.step()
    assert engine.abort(queued)  # still waiting for rows
    assert engine.abort(beam)  # its batch of its own stops
    assert engine.pending == 0 and engine.step() == []


def test_max_rows_queues_in_arrival_order(loaded):
    engine = Engine(loaded, max_rows=2)
    names = [engine.add(prompt, "greedy", max_new_tokens=n) for prompt, n in zip(PROMPTS, [2, 6, 3, 3])]
    started = []
    while engine.pending:
        for event in engine.step():
            if event.step == 0:
                started.append(event.request)
    assert started == names  # first come, first started
    for request, prompt, n in zip(names, PROMPTS, [2, 6, 3, 3]):
        same(engine.result(request), solo(loaded, prompt, "greedy", max_new_tokens=n))


def test_a_request_wider_than_max_rows_is_refused(loaded):
    engine = Engine(loaded, max_rows=2)
    with pytest.raises(GenerationError, match="takes 4 rows .* max_rows=2"):
        engine.add(PROMPTS[0], {"search": {"kind": "beam", "num_beams": 4}})


def test_logprobs_and_traces_per_request_in_a_shared_batch(loaded):
    engine = Engine(loaded)
    plain = engine.add(PROMPTS[0], SAMPLED, seed=1, max_new_tokens=6)
    engine.step()
    measured = engine.add(PROMPTS[1], SAMPLED, seed=2, max_new_tokens=6, logprobs=3, trace=True, top=4)
    while engine.pending:
        engine.step()
    expected = solo(loaded, PROMPTS[1], SAMPLED, seed=2, max_new_tokens=6, logprobs=3, trace=True, top=4)
    result = engine.result(measured)
    assert result.logprobs is not None and len(result.logprobs) == 6 and len(result.logprobs[0].top) == 3
    for got, want in zip(result.logprobs, expected.logprobs):
        assert got.chosen.token_id == want.chosen.token_id
        assert got.chosen.raw == pytest.approx(want.chosen.raw, abs=1e-4)
        assert [t.token_id for t in got.top] == [t.token_id for t in want.top]
    assert [[t.token_id for t in s.stages[-1].top] for s in result.steps] == [
        [t.token_id for t in s.stages[-1].top] for s in expected.steps
    ]
    assert engine.result(plain).logprobs is None and engine.result(plain).steps is None


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda add: add(""), "the prompt is empty"),
        (lambda add: add("a", seed=-1), "seed must be from 0"),
        (lambda add: add("a", max_new_tokens=-2), "max_new_tokens must be a whole number"),
        (lambda add: add("a", "no_such_preset"), "no_such_preset"),
        (lambda add: add("a", {"search": {"kind": "beam"}}, stop="."), "does not take stop strings"),
        (lambda add: add("a", logprobs=-1), "logprobs must be None"),
        (lambda add: add("a", {"processors": [{"kind": "top_k", "top_k": 0}]}), "top_k"),
        (lambda add: add("a", max_new_tokens=10_000), "context length"),
    ],
)
def test_bad_add_arguments_give_the_errors_generate_gives(loaded, call, words):
    engine = Engine(loaded, texts=False)
    with pytest.raises((GenerationError, StrategyError, ValidationError), match=words) as from_engine:
        call(engine.add)
    with pytest.raises(type(from_engine.value)) as from_generate:
        call(lambda *args, **kwargs: decoders.generate(*args, model=loaded, **kwargs))
    assert str(from_engine.value) == str(from_generate.value)
    assert engine.pending == 0


def test_engine_takes_no_bad_max_rows(loaded):
    with pytest.raises(GenerationError, match="max_rows must be"):
        Engine(loaded, max_rows=0)


def test_async_engine_serves_concurrent_streams_and_aborts_a_closed_one(loaded):
    import asyncio

    from decoders.engine import AsyncEngine

    runner = AsyncEngine(Engine(loaded))

    async def collect(prompt, strategy, **options):
        return [event async for event in runner.stream(prompt, strategy, **options)]

    async def leave_early():
        async for event in runner.stream(PROMPTS[3], SAMPLED, seed=5, max_new_tokens=40):
            if event.step == 1:
                break  # the client is gone: the request is aborted

    async def main():
        return await asyncio.gather(
            collect(PROMPTS[0], SAMPLED, seed=1, max_new_tokens=12),
            leave_early(),
            collect(PROMPTS[1], "greedy", max_new_tokens=7),
            runner.generate(PROMPTS[2], PENALISED, seed=4, max_new_tokens=5),
        )

    try:
        first, _, second, third = asyncio.run(main())
        assert runner.pending == 0
    finally:
        runner.close()
    same(first[-1].result, solo(loaded, PROMPTS[0], SAMPLED, seed=1, max_new_tokens=12))
    assert "".join(e.text for e in first) == first[-1].result.text
    same(second[-1].result, solo(loaded, PROMPTS[1], "greedy", max_new_tokens=7))
    same(third, solo(loaded, PROMPTS[2], PENALISED, seed=4, max_new_tokens=5))


class NaNAfter(ModelWrapper):
    """Wraps a model: rows whose input holds ``token`` get NaN logits."""

    def __init__(self, model, token):
        super().__init__(model)
        self.token = token

    def __call__(self, input_ids=None, **kwargs):
        output = self.model(input_ids=input_ids, **kwargs)
        bad = (input_ids == self.token).any(dim=-1)
        output.logits[bad] = float("nan")
        return output


def test_a_failing_batch_ends_its_requests_with_the_error_and_the_engine_goes_on(loaded):
    tokenizer = loaded.tokenizer
    poison = tokenizer("Decoding")["input_ids"][0]
    engine = Engine((NaNAfter(loaded.model, poison), tokenizer))
    good = engine.add(PROMPTS[0], "greedy", max_new_tokens=4)
    bad = engine.add(PROMPTS[2], "greedy", max_new_tokens=4)  # its prompt holds the poisoned token
    events = engine.step()
    errors = {e.request: e.error for e in events if e.error is not None}
    assert set(errors) == {good, bad}  # one batch: both end, with the error named
    assert all(isinstance(e, decoders.NonFiniteLogitsError) and "NaN" in str(e) for e in errors.values())
    assert engine.pending == 0 and engine.result(bad) is None
    again = engine.add(PROMPTS[0], "greedy", max_new_tokens=4)  # the engine keeps serving
    while engine.pending:
        engine.step()
    same(engine.result(again), solo(loaded, PROMPTS[0], "greedy", max_new_tokens=4))
    with pytest.raises(decoders.NonFiniteLogitsError):
        decoders.generate(PROMPTS[2], "greedy", (NaNAfter(loaded.model, poison), tokenizer), max_new_tokens=2)


def test_code_between_stream_events_does_not_run_in_inference_mode(loaded):
    import torch

    modes = [torch.is_inference_mode_enabled() for _ in decoders.stream(PROMPTS[0], "greedy", loaded, max_new_tokens=3)]
    assert modes == [False] * 4


def test_async_engine_waits_for_a_result_decided_after_the_rows_end(loaded):
    """Speculative decoding's rows end a step before the search returns its result: the stream waits for it."""
    import asyncio

    from decoders.engine import AsyncEngine

    strategy = {"search": {"kind": "speculative", "prompt_lookup_num_tokens": 3}}
    runner = AsyncEngine(Engine(loaded))
    try:
        result = asyncio.run(runner.generate(PROMPTS[3], strategy, max_new_tokens=6))
    finally:
        runner.close()
    same(result, solo(loaded, PROMPTS[3], strategy, max_new_tokens=6))
