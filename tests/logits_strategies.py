"""Hypothesis strategies for logits, token ids and chains, shared by the parity, property and sampling suites.

Logits are built to hit what breaks decoding code: ties (values from a small set), tokens already removed
(``-inf``, but at least one finite value per row), huge (±1e4 scale) and tiny (1e-6 scale) magnitudes,
batches of 1..8 rows, vocabularies up to 50k (most examples small, a few large so the suites stay fast),
float32 and bfloat16.

Small rows are drawn value by value (so hypothesis can shrink them); large ones are made by torch from a
drawn seed and a drawn "style".
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

import decoders

NEG_INF = float("-inf")
DTYPES = (torch.float32, torch.bfloat16)
LARGE_VOCABS = (1000, 4096, 32000, 50257)

#: values drawn one by one for small rows: ties, removed tokens, huge and tiny magnitudes, signed zero
SPECIAL_VALUES = (NEG_INF, 0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 3.0, -3.0, 1e4, -1e4, 1e-6, -1e-6, 10.0)
#: small sets whose members a row is tiled with (many exact ties)
TIE_SETS = ((0.0,), (0.0, 1.0), (1.0, 2.0, 3.0), (-1.0, 0.0, 0.5, 4.0), (1e4, 0.0), (1e-6, 2e-6, 0.0), (-2.5, 7.25))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run a module's tests on one intra-op thread (import this fixture into the module to use it).

    The tensors here are small, so OpenMP's thread wake-ups dominate — and explode when the machine's two
    cores are shared with other jobs (a [4, 50] softmax went from 2 µs to 8 ms). Results do not depend on
    the thread count: every kernel used here works row by row or element by element.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@st.composite
def vocab_sizes(draw, min_size: int = 2, max_size: int = 50257) -> int:
    """Mostly small (≤ 64), sometimes a few hundred, rarely a real vocabulary size (shrinks toward small)."""
    size_class = draw(st.integers(0, 19))
    if size_class == 19:
        choices = [v for v in LARGE_VOCABS if min_size <= v <= max_size]
        if choices:
            return draw(st.sampled_from(choices))
    if size_class >= 16 and max_size > 64:
        return draw(st.integers(max(65, min_size), max(600, min_size)))
    return draw(st.integers(min_size, max(min_size, min(64, max_size))))


def _fix_dead_rows(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Give every row without a finite value one finite token (0.0 at a random column)."""
    dead = ~torch.isfinite(x).any(dim=-1)
    for row in dead.nonzero().flatten().tolist():
        x[row, int(torch.randint(x.shape[-1], (1,), generator=g))] = 0.0
    return x


@st.composite
def logits(
    draw,
    *,
    batch: int | None = None,
    vocab: int | None = None,
    min_vocab: int = 2,
    max_vocab: int = 50257,
    dtypes: tuple[torch.dtype, ...] = DTYPES,
    neg_inf: bool = True,
    max_batch: int = 8,
) -> torch.Tensor:
    """A ``[B, V]`` logits tensor with at least one finite value per row, no NaN and no +inf."""
    b = batch if batch is not None else draw(st.integers(1, max_batch))
    v = vocab if vocab is not None else draw(vocab_sizes(min_vocab, max_vocab))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**32 - 1))
    g = torch.Generator().manual_seed(seed)
    if b * v <= 48 and draw(st.booleans()):
        pool = SPECIAL_VALUES if neg_inf else SPECIAL_VALUES[1:]
        element = st.sampled_from(pool) | st.floats(-30, 30, width=32)
        x = torch.tensor(draw(st.lists(element, min_size=b * v, max_size=b * v)), dtype=torch.float32).view(b, v)
    else:
        style = draw(st.sampled_from(["ties", "normal", "quantized", "peaked"]))
        if style == "ties":
            values = torch.tensor(draw(st.sampled_from(TIE_SETS)))
            x = values[torch.randint(len(values), (b, v), generator=g)]
        elif style == "normal":
            scale = draw(st.sampled_from([1e-6, 1.0, 4.0, 1e4]))
            x = torch.randn(b, v, generator=g) * scale
        elif style == "quantized":  # ties among many distinct values
            x = (torch.randn(b, v, generator=g) * 3).mul(4).round().div(4)
        else:  # a few dominant tokens over a flat tail
            x = torch.randn(b, v, generator=g)
            top = torch.randint(v, (b, min(3, v)), generator=g)
            x = x.scatter(1, top, torch.full(top.shape, 12.0))
        if neg_inf:
            fraction = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 0.95]))
            x = x.masked_fill(torch.rand(b, v, generator=g) < fraction, NEG_INF)
    return _fix_dead_rows(x, g).to(dtype)


@st.composite
def token_ids(draw, batch: int, vocab: int, *, max_length: int = 24, alphabet: int | None = None) -> torch.Tensor:
    """``[B, T]`` ids below ``vocab``; a small alphabet makes repeats (and repeated n-grams) likely."""
    length = draw(st.integers(0, max_length))
    top = min(vocab, alphabet or draw(st.sampled_from([3, 8, vocab])))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    return torch.randint(top, (batch, length), generator=g)


def build(processors: list[dict], selector: str = "greedy", *, use_candidates: bool = True) -> decoders.Chain:
    """A chain built through the public API (validation, registry, ``build``)."""
    strategy = decoders.Strategy.model_validate({"processors": processors, "selector": {"kind": selector}})
    return strategy.build(use_candidates=use_candidates)


def generators(seeds) -> list[torch.Generator]:
    """One seeded generator per row."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """Exact equality, -inf positions included, with a readable message on the first differences."""
    if dtype is not None:
        assert ours.dtype == dtype, f"dtype changed: {dtype} in, {ours.dtype} out"
    assert ours.shape == theirs.shape
    same = (ours == theirs) | (torch.isnan(ours) & torch.isnan(theirs))
    if not bool(same.all()):
        where = (~same).nonzero()[:5].tolist()
        details = "; ".join(f"[{r}, {c}]: ours {ours[r, c].item()!r} theirs {theirs[r, c].item()!r}" for r, c in where)
        raise AssertionError(f"{int((~same).sum())} values differ, e.g. {details}")
    assert torch.equal(torch.isneginf(ours), torch.isneginf(theirs))
