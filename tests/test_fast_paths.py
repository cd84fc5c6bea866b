"""The fast paths give the dense path's results: block top-k, aligned rows, fused temperature, top-p/min-p.

These run at real vocabulary sizes (49152, 152064 and ones that are not a multiple of 64), where the fast
paths actually engage, on logits shaped like a language model's: a few peaked tokens over a Gaussian tail.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decoders
from decoders.processors import Candidates, LogitBias, MinP, Processor, TopP
from decoders.processors.selection import aligned_scatter, aligned_tail_row, first_argmax, largest
from decoders.selectors import Greedy, row_gumbels, row_uniforms

VOCABS = (4099, 49152, 50257, 152064)


def lm_like(rows: int, vocab: int, seed: int, peak: float = 12.0, spread: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * spread
    return logits.scatter_add(1, torch.randint(0, vocab, (rows, 20), generator=g), torch.rand(rows, 20, generator=g) * peak)


shapes = st.tuples(st.integers(1, 6), st.sampled_from(VOCABS), st.integers(0, 2**31 - 1))


@settings(max_examples=25)
@given(shapes, st.sampled_from([1, 5, 50, 200]))
def test_largest_finds_the_same_values_as_topk(shape, width):
    rows, vocab, seed = shape
    logits = lm_like(rows, vocab, seed)
    logits[0, :: max(vocab // 7, 1)] = float("-inf")
    values, ids = largest(logits, width)
    assert torch.equal(values, torch.topk(logits, width).values)
    assert torch.equal(logits.gather(1, ids), values)


@settings(max_examples=25)
@given(shapes)
def test_first_argmax_is_torch_argmax_including_ties(shape):
    rows, vocab, seed = shape
    logits = lm_like(rows, vocab, seed).round()  # many ties at the top
    assert torch.equal(first_argmax(logits), logits.argmax(dim=-1))


@settings(max_examples=40)
@given(shapes, st.integers(1, 300), st.sampled_from([torch.float32, torch.bfloat16]))
def test_aligned_rows_round_like_the_dense_row(shape, count, dtype):
    rows, vocab, seed = shape
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(vocab, generator=g)[:count] for _ in range(rows)])
    values = (torch.randn(rows, count, generator=g) * 4).to(dtype)
    dense = torch.full((rows, vocab), float("-inf"), dtype=dtype).scatter(1, ids, values)
    row, columns = aligned_scatter(values, ids, vocab)
    assert torch.equal(row.softmax(-1).gather(1, columns), dense.softmax(-1).gather(1, ids))
    ascending = values.sort(dim=-1).values
    tail = aligned_tail_row(ascending, vocab)
    full = torch.full((rows, vocab), float("-inf"), dtype=dtype)
    full[:, vocab - count :] = ascending
    assert torch.equal(tail.softmax(-1).cumsum(-1)[:, -count:], full.softmax(-1).cumsum(-1)[:, -count:])


CHAINS = [
    [{"kind": "temperature", "temperature": 0.7}, {"kind": "top_k", "top_k": 50}, {"kind": "top_p", "top_p": 0.9}],
    [{"kind": "temperature", "temperature": 1.3}, {"kind": "top_k", "top_k": 40}, {"kind": "min_p", "min_p": 0.05}],
    [{"kind": "top_k", "top_k": 100}, {"kind": "epsilon_cutoff", "epsilon_cutoff": 3e-4}, {"kind": "typical_p", "typical_p": 0.9}],
    [{"kind": "top_p", "top_p": 0.9}],
    [{"kind": "top_p", "top_p": 0.6}, {"kind": "temperature", "temperature": 0.8}],
    [{"kind": "min_p", "min_p": 0.1}],
    [{"kind": "min_p", "min_p": 0.02}, {"kind": "top_k", "top_k": 10}],
    [],
]


@pytest.mark.parametrize("processors", CHAINS, ids=lambda c: "+".join(p["kind"] for p in c) or "none")
@settings(max_examples=12)
@given(shape=shapes, peak=st.sampled_from([6.0, 12.0, 25.0]), selector=st.sampled_from(["sample", "greedy"]))
def test_fast_and_dense_chains_agree_on_scores_and_tokens(processors, shape, peak, selector):
    rows, vocab, seed = shape
    logits = lm_like(rows, vocab, seed, peak=peak)
    strategy = decoders.Strategy.model_validate({"processors": processors, "selector": {"kind": selector}})
    fast, dense = strategy.build(), strategy.build(use_candidates=False)
    input_ids = torch.zeros(rows, 1, dtype=torch.long)
    assert torch.equal(fast.process(input_ids, logits), dense.process(input_ids, logits))
    generators = lambda: [torch.Generator().manual_seed(seed + row) for row in range(rows)]  # noqa: E731
    assert torch.equal(fast.select(input_ids, logits, generators()), dense.select(input_ids, logits, generators()))


def test_the_fast_paths_are_taken_on_peaked_rows():
    logits = lm_like(4, 152064, 0, peak=25.0)
    input_ids = torch.zeros(4, 1, dtype=torch.long)
    assert isinstance(TopP(0.9).to_candidates(input_ids, logits), Candidates)
    assert isinstance(MinP(0.1).to_candidates(input_ids, logits), Candidates)
    balanced = decoders.Strategy.from_preset("balanced").build()
    assert isinstance(balanced.run(input_ids, logits), Candidates)


def test_temperature_fused_into_top_k_keeps_ties_made_by_rounding():
    # two logits one float apart become equal after division: the dense rule keeps both at the k-th place
    temperature = 0.7  # x / 0.7 lands where floats are twice as coarse as at x, for x in [1.4, 2)
    base = torch.tensor(1.5)
    while base / temperature != torch.nextafter(base, torch.tensor(2.0)) / temperature:
        base = torch.nextafter(base, torch.tensor(2.0))
    neighbour = torch.nextafter(base, torch.tensor(2.0))
    logits = torch.full((1, 8192), -5.0)
    logits[0, 10], logits[0, 20], logits[0, 30] = 4.0, neighbour, base
    strategy = decoders.Strategy.model_validate(
        {"processors": [{"kind": "temperature", "temperature": temperature}, {"kind": "top_k", "top_k": 2}]}
    )
    input_ids = torch.zeros(1, 1, dtype=torch.long)
    fast = strategy.build().process(input_ids, logits)
    assert torch.equal(fast, strategy.build(use_candidates=False).process(input_ids, logits))
    assert torch.isfinite(fast).sum() == 3


def test_nan_logits_are_blamed_on_the_input_on_the_fast_path():
    logits = lm_like(2, 49152, 1)
    logits[1, 123] = float("nan")
    chain = decoders.Strategy.from_preset("balanced").build()
    with pytest.raises(decoders.NonFiniteLogitsError, match="given to processor #1 'temperature'.*row 1"):
        chain.select(torch.zeros(2, 1, dtype=torch.long), logits)


def test_seeded_draws_are_made_on_the_generators_device_and_moved_to_the_logits():
    generators = lambda: [torch.Generator().manual_seed(seed) for seed in (3, 4)]  # noqa: E731
    on_cpu = row_uniforms(2, generators())
    moved = row_uniforms(2, generators(), torch.device("meta"))  # a device with no data: nothing is computed there
    assert moved.device.type == "meta" and moved.shape == on_cpu.shape and moved.dtype == torch.float64
    assert torch.equal(on_cpu, torch.cat([torch.rand(1, dtype=torch.float64, generator=g) for g in generators()]))
    assert row_gumbels((2, 5), generators(), torch.device("meta")).device.type == "meta"


class FailsOnRemovedRows(Processor):
    """A processor that cannot handle a row without any finite value (as a third-party one might not)."""

    def process(self, input_ids, logits):
        if not torch.isfinite(logits).any(dim=-1).all():
            raise RuntimeError("cannot normalise an empty row")
        return logits


def test_the_first_bad_stage_is_named_also_when_a_later_processor_fails_on_it():
    chain = decoders.Chain([LogitBias({token: float("-inf") for token in range(6)}), FailsOnRemovedRows()], Greedy())
    logits = torch.zeros(2, 6)
    with pytest.raises(decoders.NonFiniteLogitsError, match=r"returned by processor #1 'LogitBias' have every token removed"):
        chain.select(torch.zeros(2, 1, dtype=torch.long), logits)
    with pytest.raises(decoders.NonFiniteLogitsError, match=r"given to processor #1 'LogitBias' contain NaN in batch row 1"):
        chain.select(torch.zeros(2, 1, dtype=torch.long), torch.tensor([[0.0] * 6, [float("nan")] * 6]))
