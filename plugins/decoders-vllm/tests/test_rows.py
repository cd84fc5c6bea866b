"""decoders_vllm.rows without vLLM: strategies refused or accepted, and a fake vLLM batch driven at random (requests
join, leave, move, swap; prompts in chunked prefill get no token for a while) whose every opted-in row must be
processed exactly as a from-scratch rebuild holding that request alone, every other row left untouched."""

from __future__ import annotations

import json
import logging

import pytest
import tally
import torch
from decoders_vllm.rows import DecodersRows, request_strategy, resolve_strategy
from fake_vllm import FakeBatch, Params, Request
from hypothesis import given, settings
from hypothesis import strategies as st

import decoders
from decoders.errors import StrategyError

VOCAB = 16
EOS = 15


@pytest.fixture(scope="module", autouse=True)
def test_kinds():
    decoders.register_plugin(tally, "decoders-vllm-tests")
    yield
    decoders.unregister_plugin("decoders-vllm-tests")


def has_kind(kind: str) -> bool:
    return kind in decoders.get_registry().processors


# ---- strategies ---------------------------------------------------------------------------------------------------


def test_no_opt_in_is_none():
    assert request_strategy(None) is None
    assert request_strategy({"other": 1}) is None


@pytest.mark.parametrize(
    "spec",
    [
        "balanced",
        {"processors": [{"kind": "temperature", "temperature": 0.7}], "selector": {"kind": "sample"}},
        json.dumps({"processors": [{"kind": "top_p", "top_p": 0.9}], "selector": {"kind": "sample"}}),
    ],
)
def test_accepts_preset_dict_and_json_text(spec):
    assert request_strategy({"decoders": spec}, temperature=1.0).selector.kind == "sample"


@pytest.mark.parametrize(
    "spec, temperature, words",
    [
        ({"processors": [{"kind": "top_k", "top_k": 0}]}, 0.0, ["decoders:", "processors.0.top_k"]),
        ({"processors": [{"kind": "top_p", "top_p": 1.5}], "selector": {"kind": "sample"}}, 1.0, ["top_p", "1"]),
        ({"processors": [{"kind": "no_such_kind"}]}, 0.0, ["no_such_kind", "repetition_penalty"]),
        ({"processors": []}, 0.7, ["'greedy'", "temperature=0"]),
        ({"selector": {"kind": "sample"}}, 0.0, ["'sample'", "temperature=1"]),
        ("beam_search", 0.0, ["'beam'", "LLM.beam_search"]),
        ({"search": {"kind": "best_of", "n": 3}, "selector": {"kind": "sample"}}, 1.0, ["'best_of'", "n="]),
        ("top-p", 1.0, ["'top-p' is not a preset", "did you mean 'top_p'?"]),
        ("/etc/strategy.json", 1.0, ["reads no strategy files"]),
        ("[1, 2]", 1.0, ["must be an object, got a list"]),
        ('{"processors": 3', 1.0, ["not valid JSON"]),
        (7, 1.0, ["preset name", "int"]),
    ],
)
def test_refusals_in_decoders_words(spec, temperature, words):
    with pytest.raises(StrategyError) as error:
        request_strategy({"decoders": spec}, temperature)
    message = str(error.value)
    assert message.startswith("decoders: ")
    for word in words:
        assert word in message, message


def test_refusals_are_value_errors():
    """vLLM turns a ValueError from validate_params into VLLMValidationError / HTTP 400."""
    with pytest.raises(ValueError):
        request_strategy({"decoders": "contrastive"}, 0.0)


def test_resolve_caches_equal_specs():
    spec = {"selector": {"kind": "sample"}, "processors": [{"kind": "top_k", "top_k": 3}]}
    assert resolve_strategy(spec) is resolve_strategy(dict(reversed(list(spec.items()))))


# ---- the rows: small cases -------------------------------------------------------------------------------------


def _rows(tokenizer=None) -> DecodersRows:
    return DecodersRows(tokenizer=tokenizer, eos_token_ids=(EOS,))


def test_untouched_without_opt_in():
    rows, batch = _rows(), FakeBatch()
    for _ in range(3):
        batch.add(Request([1, 2], Params(seed=1)))
    rows.update(batch.update())
    logits = torch.randn(3, VOCAB)
    before = logits.clone()
    assert rows.apply(logits) is logits
    assert torch.equal(logits, before)
    assert rows.mixed is None and not rows.order


def test_only_opted_in_rows_change():
    rows, batch = _rows(), FakeBatch()
    plain, top1 = (
        Request([1], Params()),
        Request([2], Params(extra_args={"decoders": {"processors": [{"kind": "top_k", "top_k": 1}]}})),
    )
    batch.add(plain)
    batch.add(top1)
    rows.update(batch.update())
    logits = torch.randn(2, VOCAB)
    before = logits.clone()
    rows.apply(logits)
    assert torch.equal(logits[0], before[0])
    assert torch.isfinite(logits[1]).sum() == 1 and logits[1].argmax() == before[1].argmax()


def test_seed_gives_the_row_generator():
    rows, batch = _rows(), FakeBatch()
    batch.add(Request([1], Params(extra_args={"decoders": "top_k"}, seed=1234)))
    rows.update(batch.update())
    assert rows.slots[0].row.generator.initial_seed() == 1234


def test_unseeded_requests_draw_alike_in_every_worker():
    """Tensor-parallel workers each run an instance: with the engine's seed, their unseeded rows must agree."""

    def seeds(engine_seed):
        rows, batch = DecodersRows(seed=engine_seed), FakeBatch()
        for _ in range(3):
            batch.add(Request([1], Params(extra_args={"decoders": "top_k"})))
        rows.update(batch.update())
        return [rows.slots[i].row.generator.initial_seed() for i in range(3)]

    assert seeds(0) == seeds(0) and len(set(seeds(0))) == 3
    assert seeds(0) != seeds(1)
    assert seeds(None) != seeds(None)


def test_failing_chain_ends_its_request_and_the_rest_go_on(caplog):
    rows, batch = _rows(), FakeBatch()
    bad = Request([1, 2], Params(extra_args={"decoders": {"processors": [{"kind": "explode", "after": 1}]}}))
    good = Request([3], Params(extra_args={"decoders": {"processors": [{"kind": "tally"}]}}))
    batch.add(bad)
    batch.add(good)
    rows.update(batch.update())
    for step in range(3):
        logits = torch.zeros(2, VOCAB)
        with caplog.at_level(logging.ERROR, logger="decoders_vllm"):
            rows.apply(logits)
        if step == 0:
            assert torch.equal(logits[0], torch.zeros(VOCAB))
        else:  # the bad request's row allows EOS only, from the step its chain failed
            assert torch.isfinite(logits[0]).sum() == 1 and logits[0, EOS] == 0
        assert torch.isfinite(logits[1]).all()
        bad.outputs.append(4)
        good.outputs.append(5)
        rows.update(batch.update())
    assert "explode: boom" in caplog.text and "ended with EOS" in caplog.text
    assert logits[1, 5] == 1.0  # good row: two accepted 5s, 0.5 each (the last one is not fed yet)


def test_placeholder_ids_wait_for_the_real_token(caplog):
    rows, batch = _rows(), FakeBatch()
    request = Request([1], Params(extra_args={"decoders": {"processors": [{"kind": "tally"}]}}))
    batch.add(request)
    rows.update(batch.update())
    rows.apply(torch.zeros(1, VOCAB))
    request.outputs.append(-1)  # vLLM's async scheduling: the token is not known yet
    with caplog.at_level(logging.WARNING, logger="decoders_vllm"):
        logits = rows.apply(torch.zeros(1, VOCAB))
    assert torch.equal(logits, torch.zeros(1, VOCAB)) and "async" in caplog.text
    request.outputs[-1] = 7
    logits = rows.apply(torch.zeros(1, VOCAB))
    assert logits[0, 7] == 0.5 and not tally.PROBLEMS


def test_a_strategy_that_fails_with_the_tokenizer_ends_only_its_request(caplog):
    if not has_kind("dry"):
        pytest.skip("the decoders-llamacpp-samplers plugin (DRY) is not installed")
    rows, batch = _rows(tokenizer=None), FakeBatch()  # DRY's breakers need a tokenizer
    batch.add(Request([1], Params(extra_args={"decoders": {"processors": [{"kind": "dry", "dry_multiplier": 0.8}]}})))
    batch.add(Request([2], Params(extra_args={"decoders": "top_k"})))
    with caplog.at_level(logging.ERROR, logger="decoders_vllm"):
        rows.update(batch.update())
        logits = rows.apply(torch.randn(2, VOCAB))
    assert "tokenizer" in caplog.text
    assert torch.isfinite(logits[0]).sum() == 1 and logits[0, EOS] == 0
    assert torch.isfinite(logits[1]).sum() == 5


# ---- the rows: random batches against from-scratch rebuilds --------------------------------------------------------


def strategies_pool() -> list[dict | str | None]:
    pool: list = [
        None,
        None,
        "top_k",
        {"processors": [{"kind": "tally"}, {"kind": "repetition_penalty", "repetition_penalty": 1.3}]},
        {"processors": [{"kind": "no_repeat_ngram", "no_repeat_ngram_size": 2}, {"kind": "tally"},
                        {"kind": "presence_frequency", "presence_penalty": 0.5, "frequency_penalty": 0.25}]},
        {"processors": [{"kind": "old_tally"}, {"kind": "min_new_tokens", "min_new_tokens": 2}]},
        {"processors": [{"kind": "temperature", "temperature": 0.5}, {"kind": "old_tally"}, {"kind": "top_k", "top_k": 6}],
         "selector": {"kind": "sample"}},
    ]  # fmt: skip
    if has_kind("dry"):
        pool.append(
            {"processors": [{"kind": "dry", "dry_multiplier": 0.8, "dry_allowed_length": 1}, {"kind": "tally"}]}
        )
    return pool


def rebuild(request: Request, logits_row: torch.Tensor, tokenizer) -> torch.Tensor:
    """The request alone in a fresh DecodersRows, given all its outputs at once (as after preemption)."""
    rows, batch = _rows(tokenizer), FakeBatch()
    alone = Request(request.prompt, request.params, list(request.outputs))
    batch.add(alone)
    rows.update(batch.update())
    return rows.apply(logits_row.clone().unsqueeze(0))[0]


actions = st.lists(
    st.tuples(
        st.lists(st.integers(0, 6), max_size=3),  # strategies of the requests that join (pool indices)
        st.lists(st.integers(0, 20), max_size=2),  # requests that finish (indices into the batch, mod its size)
        st.booleans(),  # a swap
        st.booleans(),  # skip this step's apply (two updates in a row)
        st.lists(st.integers(0, 2), min_size=8, max_size=8),  # new tokens per request (0: still in prefill)
        st.integers(0, 2**16),  # logits and tokens seed
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=150)
@given(actions)
def test_random_batches_match_rebuilds(toy_tokenizer, steps):
    pool = strategies_pool()
    rows, batch = _rows(toy_tokenizer), FakeBatch()
    tally.PROBLEMS.clear()
    for joining, leaving, swap, skip, counts, seed in steps:
        generator = torch.Generator().manual_seed(seed)
        live = batch.requests
        for index in sorted({i % len(live) for i in leaving} if live else ()):
            batch.remove(live[index])
        for pick in joining:
            spec = pool[pick % len(pool)]
            prompt = torch.randint(
                0, VOCAB, (int(torch.randint(1, 6, (1,), generator=generator)),), generator=generator
            )
            batch.add(
                Request(prompt.tolist(), Params(extra_args=None if spec is None else {"decoders": spec}, seed=seed))
            )
        batch.condense()
        if swap and len(batch.slots) >= 2:
            batch.swap(0, len(batch.slots) - 1)
        rows.update(batch.update())
        if not skip and batch.slots:
            logits = torch.randn(len(batch.slots), VOCAB, generator=generator)
            before = logits.clone()
            rows.apply(logits)
            assert all(r.failed is None for r in rows.slots.values()), [r.failed for r in rows.slots.values()]
            for slot, request in enumerate(batch.slots):
                if request.params.extra_args is None:
                    assert torch.equal(logits[slot], before[slot]), f"plain request at slot {slot} was changed"
                else:
                    expected = rebuild(request, before[slot], toy_tokenizer)
                    torch.testing.assert_close(logits[slot], expected, rtol=0, atol=0, msg=f"slot {slot}")
        for request, count in zip(batch.requests, counts):
            request.outputs += torch.randint(0, VOCAB, (count,), generator=generator).tolist()
    assert not tally.PROBLEMS, tally.PROBLEMS[:5]


@pytest.mark.parametrize("where", [slice(1, 3), torch.tensor([2, 0])])
def test_candidates_are_written_as_their_dense_scores(where):
    """Padding entries (-inf) may repeat a real entry's id: the real value must win, as in Candidates.to_dense."""
    from decoders_vllm.rows import _write

    inf = float("-inf")
    candidates = decoders.Candidates(
        torch.tensor([[inf, 2.0, inf, 1.0], [0.5, inf, inf, inf]]), torch.tensor([[3, 3, 3, 7], [5, 5, 1, 5]]), 8
    )
    logits = torch.randn(3, 8)
    expected = logits.clone()
    rows = torch.arange(3)[where]
    expected[rows] = candidates.to_dense()
    _write(logits, where, candidates)
    assert torch.equal(logits, expected)
