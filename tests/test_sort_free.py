"""Top-p and typical-p find their cut without sorting the vocabulary, and keep exactly transformers' tokens.

The rows are long enough for the sort-free cuts to run (V ≥ FAST_VOCAB on the CPU in float32), shaped like flat
(Zipf) and peaked language-model rows, with ties (values on a coarse grid) and -inf entries drawn by hypothesis.
"""

import multiprocessing
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import TopPLogitsWarper, TypicalLogitsWarper

import decoders
import decoders.processors.selection as selection
import decoders.processors.truncation as truncation
from decoders.processors import TopP, TypicalP

RULES = {"top_p": (TopP, TopPLogitsWarper), "typical_p": (TypicalP, TypicalLogitsWarper)}


def zipf_rows(rows: int, vocab: int, exponent: float, seed: int) -> torch.Tensor:
    """Rank-ordered Zipf logits (``-exponent · log rank``), ranks shuffled over the token ids of each row."""
    generator = torch.Generator().manual_seed(seed)
    ranks = torch.stack([torch.randperm(vocab, generator=generator) + 1 for _ in range(rows)])
    return (-exponent * ranks.double().log()).float()


@st.composite
def long_rows(draw):
    rows = draw(st.integers(1, 4))
    vocab = draw(st.sampled_from([4096, 4099, 8192, 50257]))
    seed = draw(st.integers(0, 2**31 - 1))
    shape = draw(st.sampled_from(["zipf", "peaked", "uniform"]))
    if shape == "zipf":
        logits = zipf_rows(rows, vocab, draw(st.floats(0.5, 1.6)), seed)
    elif shape == "peaked":
        generator = torch.Generator().manual_seed(seed)
        logits = torch.randn(rows, vocab, generator=generator) * draw(st.sampled_from([0.5, 2.0, 4.0]))
        logits = logits.scatter_add(1, torch.randint(0, vocab, (rows, 20), generator=generator), torch.rand(rows, 20, generator=generator) * 12)
    else:
        logits = torch.zeros(rows, vocab)
    grid = draw(st.sampled_from([None, 2.0**-12, 2.0**-4, 0.5]))  # coarse grids make ties, also at the cut
    if grid is not None:
        logits = (logits / grid).round() * grid
    removed = draw(st.sampled_from([0.0, 0.1, 0.9]))  # a share of the tokens at -inf
    if removed:
        generator = torch.Generator().manual_seed(seed + 1)
        logits = logits.masked_fill(torch.rand(rows, vocab, generator=generator) < removed, float("-inf"))
        logits[:, 0] = logits[:, 0].clamp(min=-1e4)  # keep one finite value per row
    shift = draw(st.floats(-30, 30))
    return logits + shift


@pytest.mark.parametrize("kind", list(RULES))
@settings(max_examples=40, deadline=None)
@given(
    logits=long_rows(),
    mass=st.one_of(st.sampled_from([0.5, 0.9, 0.95, 0.99]), st.floats(0.01, 0.999)),
    min_tokens_to_keep=st.sampled_from([1, 1, 3]),
)
def test_the_sort_free_cut_keeps_transformers_tokens(kind, logits, mass, min_tokens_to_keep):
    ours, theirs = RULES[kind]
    input_ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)
    expected = theirs(mass, min_tokens_to_keep=min_tokens_to_keep)(input_ids, logits)
    assert torch.equal(ours(mass, min_tokens_to_keep).process(input_ids, logits), expected)


@pytest.mark.parametrize("kind", list(RULES))
@settings(max_examples=10, deadline=None)
@given(logits=long_rows(), mass=st.sampled_from([0.8, 0.95]), seed=st.integers(0, 1000))
def test_chains_with_the_sort_free_cut_agree_on_both_paths(kind, logits, mass, seed):
    strategy = decoders.Strategy.model_validate(
        {"processors": [{"kind": "temperature", "temperature": 1.3}, {"kind": kind, kind: mass}], "selector": {"kind": "sample"}}
    )
    input_ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)
    fast, dense = strategy.build(), strategy.build(use_candidates=False)
    assert torch.equal(fast.process(input_ids, logits), dense.process(input_ids, logits))
    generators = lambda: [torch.Generator().manual_seed(seed + row) for row in range(logits.shape[0])]  # noqa: E731
    assert torch.equal(fast.select(input_ids, logits, generators()), dense.select(input_ids, logits, generators()))


def test_flat_rows_are_cut_without_sorting_the_vocabulary(monkeypatch):
    logits = zipf_rows(16, 152064, 1.1, 0)
    input_ids = torch.zeros(16, 1, dtype=torch.long)
    expected = TopPLogitsWarper(0.9)(input_ids, logits)
    # count the rows that reach a sort of the whole row (values, packed keys, or transformers' argsort)
    sorted_rows = []
    for name in ("sorted_values", "sorted_by_key"):
        original = getattr(truncation, name)
        monkeypatch.setattr(truncation, name, lambda *tensors, f=original: sorted_rows.append(len(tensors[0])) or f(*tensors))
    argsort = torch.sort
    monkeypatch.setattr(torch, "sort", lambda t, *a, **k: sorted_rows.append(len(t) if t.shape[-1] > 4096 else 0) or argsort(t, *a, **k))
    assert torch.equal(TopP(0.9).process(input_ids, logits), expected)
    assert sum(sorted_rows) <= 16 // 2, f"{sum(sorted_rows)} of 16 flat rows were sorted"
    assert torch.isfinite(expected).sum(dim=-1).min() > 10_000  # a flat row: the nucleus is tens of thousands of tokens


@pytest.mark.parametrize("vocab", [131075, 152064])  # ≥ 2048 blocks of 64 (the first with a short last block)
@pytest.mark.parametrize("shape", ["zipf", "peaked"])
def test_top_p_on_large_vocabularies_flat_or_peaked(vocab, shape, monkeypatch):
    """Above 2048 blocks the candidate attempt first bounds the top 512 tokens' mass by the heaviest blocks (a flat
    row gives up there, before taking any largest values); either way the kept set is transformers'."""
    logits = zipf_rows(3, vocab, 1.1, 5)
    if shape == "peaked":
        logits[:, :40] += 25.0  # a nucleus of a few dozen tokens: the candidate path holds it
    input_ids = torch.zeros(3, 1, dtype=torch.long)
    expected = TopPLogitsWarper(0.9)(input_ids, logits)
    widths = []
    monkeypatch.setattr(truncation, "largest", lambda x, width, f=truncation.largest: widths.append(width) or f(x, width))
    assert (TopP(0.9).to_candidates(input_ids, logits) is None) == (shape == "zipf")
    assert (widths == []) == (shape == "zipf")
    strategy = decoders.Strategy.model_validate({"processors": [{"kind": "top_p", "top_p": 0.9}], "selector": {"kind": "sample"}})
    for use_candidates in (True, False):
        assert torch.equal(strategy.build(use_candidates=use_candidates).process(input_ids, logits), expected)


def test_nan_rows_still_name_the_input_on_the_sort_free_path():
    logits = zipf_rows(3, 8192, 1.1, 2)
    logits[2, 17] = float("nan")
    chain = decoders.Strategy.model_validate({"processors": [{"kind": "top_p", "top_p": 0.9}], "selector": {"kind": "sample"}}).build()
    with pytest.raises(decoders.NonFiniteLogitsError, match="given to processor #1 'top_p' contain NaN in batch row 2"):
        chain.select(torch.zeros(3, 1, dtype=torch.long), logits)


@pytest.mark.parametrize("shape", ["zipf", "peaked"])
def test_typical_p_sends_flat_rows_straight_to_the_sorted_sums(shape, monkeypatch):
    """A flat row's cut lies among tokens far lighter than the histogram search's band, so the search is skipped
    and the row is cut from its sorted sums; a peaked row is cut by the search, without sorting. Either way the
    kept set is transformers'."""
    logits = zipf_rows(4, 50257, 1.1, 3)
    if shape == "peaked":
        logits[:, 0] = 14.0  # one token holds ~98% of the mass: it is the cut
    input_ids = torch.zeros(4, 1, dtype=torch.long)
    expected = TypicalLogitsWarper(0.9)(input_ids, logits)
    searched, sorted_rows = [], []
    monkeypatch.setattr(truncation, "mass_cut", lambda keys, *a, f=truncation.mass_cut: searched.append(len(keys)) or f(keys, *a))
    monkeypatch.setattr(truncation, "sorted_by_key", lambda keys, *a, f=truncation.sorted_by_key: sorted_rows.append(len(keys)) or f(keys, *a))
    assert torch.equal(TypicalP(0.9).process(input_ids, logits), expected)
    assert (sum(searched), sum(sorted_rows)) == ((0, 4) if shape == "zipf" else (4, 0))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_rows_sorted_on_several_threads_equal_numpy_sort(threads, rows):
    generator = torch.Generator().manual_seed(rows)
    values = torch.randint(-(2**62), 2**62, (rows, 10_001), generator=generator).numpy()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        in_place = values.copy()
        selection.sort_rows_in_place(in_place)
    finally:
        torch.set_num_threads(before)
    assert (in_place == np.sort(values, axis=-1)).all()


def _sorted_in_child(values: np.ndarray) -> np.ndarray:
    selection.sort_rows_in_place(values)
    return values


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_forked_child_sorts_rows_after_its_parent_did():
    """The sort threads belong to the process that started them: a forked child (a multiprocessing pool worker)
    starts its own instead of waiting forever on its parent's."""
    values = np.random.default_rng(0).integers(0, 1000, (4, 10_000))
    selection.sort_rows_in_place(values.copy())  # the parent's threads exist now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert (pool.apply_async(_sorted_in_child, (values.copy(),)).get(timeout=60) == np.sort(values, axis=-1)).all()


def test_threads_cutting_at_once_keep_their_own_tokens():
    """The cuts' temporaries are per thread: two threads cutting different batches at the same time each get
    what a lone call gives (a server answering requests on a thread pool)."""
    batches = [zipf_rows(8, 50257, exponent, seed) for exponent, seed in ((0.9, 1), (1.3, 2))]
    rules = [TopP(0.9), TypicalP(0.9)]
    expected = [[rule.process(None, logits) for rule in rules] for logits in batches]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            results = list(pool.map(lambda logits: [rule.process(None, logits) for rule in rules], batches))
            for got, want in zip(results, expected):
                assert all(torch.equal(g, w) for g, w in zip(got, want))
