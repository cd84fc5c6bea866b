"""The selectors: ``sample`` draws from softmax of the processed logits, ``greedy`` takes the first maximum,
and a row's token depends only on its own logits and generator.

The chi-square tests use fixed seeds (one generator per draw, seeded 0..N-1), so they are deterministic:
they cannot flake, and each also checks that it would notice a slightly wrong distribution.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

import decoders
from decoders.processors import Candidates
from tests.logits_strategies import (  # noqa: F401 (one_thread is a fixture)
    NEG_INF,
    build,
    generators,
    logits,
    one_thread,
)

DRAWS = 20_000
#: a fixed distribution over 32 tokens with probabilities from ~0.25 down to ~0.002, and a few ties
BASE = torch.tensor(
    [[2.0, 1.5, 1.5, 1.0, 0.8, 0.5, 0.5, 0.3, 0.0, -0.2, -0.5, -0.5, -0.8, -1.0, -1.2, -1.5]
     + [-1.7, -2.0, -2.2, -2.5, -2.5, -2.7, -3.0, -3.0, -3.2, -3.4, -3.5, -3.6, -3.8, -4.0, -4.2, -4.5]]
)  # fmt: skip


def _draw_counts(chain: decoders.Chain, x: torch.Tensor, draws: int = DRAWS) -> torch.Tensor:
    """Token counts from ``draws`` rows of ``x`` [1, V], row i sampled with a generator seeded i."""
    batch = x.expand(draws, -1).contiguous()
    tokens = chain.select(torch.zeros(draws, 0, dtype=torch.long), batch, generators(range(draws)))
    return torch.bincount(tokens, minlength=x.shape[-1])


def _p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square p-value of ``counts`` against ``probs``; tokens expected fewer than 5 times share one bin."""
    support = probs > 0
    assert int(counts[~support].sum()) == 0, "a token with probability 0 was drawn"
    expected = (probs[support] * counts.sum()).double()
    observed = counts[support].double()
    rare = expected < 5
    if bool(rare.any()):
        expected = torch.cat([expected[~rare], expected[rare].sum().view(1)])
        observed = torch.cat([observed[~rare], observed[rare].sum().view(1)])
    return float(chisquare(observed.numpy(), expected.numpy()).pvalue)


CASES = {
    "pure sampling": ([], None),
    "temperature 0.7": ([{"kind": "temperature", "temperature": 0.7}], None),
    "top_k 5": ([{"kind": "top_k", "top_k": 5}], [0, 1, 2, 3, 4]),
    "top_p 0.6": ([{"kind": "top_p", "top_p": 0.6}], [0, 1, 2, 3]),
    "top_k 12, top_p 0.8": ([{"kind": "top_k", "top_k": 12}, {"kind": "top_p", "top_p": 0.8}], list(range(7))),
    "balanced": (decoders.PRESETS["balanced"]["processors"], list(range(8))),
}


@pytest.mark.parametrize("use_candidates", [True, False], ids=["candidates", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_sample_follows_softmax_of_the_processed_logits(case, dtype, use_candidates):
    processors, support = CASES[case]
    x = BASE.to(dtype)
    chain = build(processors, "sample", use_candidates=use_candidates)
    processed = chain.process(torch.zeros(1, 0, dtype=torch.long), x)
    probs = processed.double().softmax(dim=-1)[0]
    if support is not None:  # the truncation kept what it should (ids of BASE by decreasing logit)
        assert torch.isfinite(processed[0]).nonzero().flatten().tolist() == support
    counts = _draw_counts(chain, x)
    assert _p_value(counts, probs) > 1e-3
    # the test has the power to notice a slightly different distribution (logits 20% sharper)
    sharper = (processed.double() * 1.2).softmax(dim=-1)[0]
    assert _p_value(counts, sharper) < 1e-3


def test_the_candidate_path_is_used_by_the_truncated_cases():
    for case in ("top_k 5", "top_k 12, top_p 0.8"):  # (balanced's top_k 50 is wider than these 32 tokens)
        assert isinstance(build(CASES[case][0], "sample").run(torch.zeros(1, 0, dtype=torch.long), BASE), Candidates)


def test_sample_on_a_distribution_with_removed_and_underflowing_tokens():
    """-inf tokens are never drawn, nor are tokens whose probability underflows to 0 (here e^-200)."""
    x = torch.tensor([[0.0, NEG_INF, -200.0, 0.0, NEG_INF, -1.0]])
    counts = _draw_counts(build([], "sample"), x, draws=5000)
    probs = x.double().softmax(dim=-1)[0]
    assert counts[[1, 2, 4]].tolist() == [0, 0, 0]
    assert _p_value(counts, torch.where(probs > 1e-80, probs, 0)) > 1e-3


@pytest.mark.parametrize("vocab", [1000, 4096, 50257])
def test_sample_on_long_rows_is_the_exact_inverse_transform(vocab):
    """Long rows find the draw in two levels (blocks of token ids, then a block): the pick is the first token whose
    exact running probability passes the row's uniform draw, on the dense row and on its candidate set alike."""
    draws = 2000
    g = torch.Generator().manual_seed(vocab)
    x = torch.randn(1, vocab, generator=g) * 3
    x[torch.rand(1, vocab, generator=g) < 0.5] = NEG_INF  # half the row removed, in runs across blocks
    x[0, -1] = x.max() + 1  # the most likely token is the last one (in a partial block when vocab % 64)
    batch = x.expand(draws, -1).contiguous()
    uniforms = decoders.row_uniforms(draws, generators(range(draws)))  # each row's draw, as the selector takes it
    running = torch.softmax(x[0].double(), dim=-1).cumsum(dim=-1)
    expected = torch.searchsorted(running, uniforms.unsqueeze(-1) * running[-1], right=True).squeeze(-1)
    sample = build([], "sample").selector
    dense = sample.select(batch, generators(range(draws)))
    kept = torch.isfinite(x[0]).nonzero().squeeze(-1)
    candidates = Candidates(x[:, kept].expand(draws, -1), kept.expand(draws, -1), vocab)
    assert torch.equal(dense, expected)
    assert torch.equal(sample.select_candidates(candidates, generators(range(draws))), expected)
    assert bool(torch.isfinite(x[0, dense]).all()) and int((dense == vocab - 1).sum()) > 0


# ---- greedy -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_candidates", [True, False])
def test_greedy_picks_the_lowest_id_on_ties(use_candidates):
    x = torch.zeros(3, 64)
    x[0, [40, 7, 33]] = 5.0  # tie between 7, 33, 40
    x[1, [63, 62]] = 2.0
    x[1, 10] = 1.5
    x[2, :] = 1.0  # all equal
    chain = build([{"kind": "top_k", "top_k": 3}], "greedy", use_candidates=use_candidates)
    ids = torch.zeros(3, 0, dtype=torch.long)
    if use_candidates:  # the first two rows go through a candidate set
        assert isinstance(chain.run(ids[:2], x[:2]), Candidates)
    assert chain.select(ids[:2], x[:2]).tolist() == [7, 62]
    assert chain.select(ids, x).tolist() == [7, 62, 0]


@given(x=logits(), k=st.integers(1, 60))
def test_greedy_is_the_first_maximum_of_the_processed_logits(x, k):
    ids = torch.zeros(x.shape[0], 0, dtype=torch.long)
    for use_candidates in (True, False):
        chain = build(
            [{"kind": "top_k", "top_k": k}, {"kind": "temperature", "temperature": 0.5}],
            "greedy",
            use_candidates=use_candidates,
        )
        processed = chain.process(ids, x)
        first_max = (processed == processed.amax(dim=-1, keepdim=True)).int().argmax(dim=-1)
        assert torch.equal(chain.select(ids, x), first_max)
        assert torch.equal(chain.select(ids, x), x.argmax(dim=-1))


# ---- a row depends only on itself -------------------------------------------------------------------------

ROW_CHAINS = {
    "pure": [],
    "balanced": decoders.PRESETS["balanced"]["processors"],
    "llama_cpp": decoders.PRESETS["llama_cpp"]["processors"],
    "top_k 3": [{"kind": "top_k", "top_k": 3}],
}


@settings(max_examples=40)
@pytest.mark.parametrize("name", list(ROW_CHAINS))
@given(data=st.data())
def test_a_rows_draw_depends_only_on_its_own_logits_and_generator(name, data):
    vocab = data.draw(st.integers(2, 300) | st.sampled_from([4096]), label="vocab")
    x = data.draw(logits(vocab=vocab), label="logits")
    others = data.draw(logits(vocab=vocab, dtypes=(x.dtype,)), label="other rows")
    batch = x.shape[0]
    row = data.draw(st.integers(0, batch - 1), label="row")
    seeds = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=batch, max_size=batch), label="seeds")
    other_seeds = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=others.shape[0], max_size=others.shape[0]))
    for use_candidates in (True, False):
        chain = build(ROW_CHAINS[name], "sample", use_candidates=use_candidates)
        in_batch = chain.select(torch.zeros(batch, 0, dtype=torch.long), x, generators(seeds))[row]
        # the same row among other rows (other logits, other generators), at another position
        mixed = torch.cat([others, x[row : row + 1]])
        mixed_seeds = other_seeds + [seeds[row]]
        elsewhere = chain.select(torch.zeros(len(mixed), 0, dtype=torch.long), mixed, generators(mixed_seeds))[-1]
        alone = chain.select(torch.zeros(1, 0, dtype=torch.long), x[row : row + 1], generators([seeds[row]]))[0]
        assert int(in_batch) == int(elsewhere) == int(alone)


def test_the_same_seeds_give_the_same_tokens_and_other_seeds_others():
    x = torch.randn(8, 1000, generator=torch.Generator().manual_seed(3))
    chain = build(decoders.PRESETS["balanced"]["processors"], "sample")
    ids = torch.zeros(8, 0, dtype=torch.long)
    first = chain.select(ids, x, generators(range(8)))
    assert torch.equal(chain.select(ids, x, generators(range(8))), first)
    assert not torch.equal(chain.select(ids, x, generators(range(100, 108))), first)


def test_one_generator_per_row_is_required():
    with pytest.raises(ValueError, match="one torch.Generator per row"):
        build([], "sample").select(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 5), generators([1]))


@pytest.mark.parametrize("vocab_size", [2, 64, 49152, 152064, 2**20])
def test_far_below_values_weigh_what_their_exp_gives(vocab_size):
    """The draw's fixed-point weights skip exp's slow path for -inf and far-below values; every weight is still
    floor(exp(x - max) · 2^s) of the plain formula, for spreads from 0.1 to 10^4 and any vocabulary size."""
    from decoders.selectors import fixed_point_weights

    generator = torch.Generator().manual_seed(vocab_size % 1000)
    spreads = torch.tensor([0.1, 1.0, 5.0, 20.0, 50.0, 100.0, 300.0, 1e4]).unsqueeze(1)
    values = torch.randn(8, 999, generator=generator) * spreads
    values[:, ::3] = float("-inf")
    shift = 62 - max(vocab_size, 2).bit_length()
    plain = torch.sub(values, values.amax(dim=-1, keepdim=True)).exp_().mul_(2.0**shift).to(torch.int64)
    assert torch.equal(fixed_point_weights(values, vocab_size), plain)
