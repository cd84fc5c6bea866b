"""Invariants of every built-in processor kind, checked with hypothesis through the public API.

- the output is a valid distribution after softmax, in the input dtype, and the input tensor is untouched;
- every row keeps a token (or, for constraints that can ban every token, the chain raises a clear error);
- the chain gives what the processor object gives, with and without the candidate-set fast path;
- per-kind promises: truncations only remove; a maximal token survives; top-p keeps mass ≥ p with a minimal
  set; top-k keeps ≥ k; temperature keeps the argmax; min-p ignores a constant shift; top-nσ ignores
  temperature; presence/frequency subtract what their definition says;
- candidate path and dense path give identical scores and identical tokens from identical generators.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decoders
from decoders.builtins import PROCESSOR_CONFIGS
from decoders.processors import DecodeContext
from tests.logits_strategies import (  # noqa: F401 (one_thread is a fixture)
    NEG_INF,
    assert_same,
    build,
    generators,
    logits,
    one_thread,
    token_ids,
)

KEEP = st.sampled_from([1, 1, 2, 3])
BIASES = st.sampled_from([NEG_INF, 1e4, -1e4, 0.0, 2.5, -3.0]) | st.floats(-20, 20)


def draw_config(data, kind: str, vocab: int) -> dict:
    """A valid config of ``kind`` for a vocabulary of ``vocab`` tokens."""
    d = data.draw
    if kind == "temperature":
        return {"kind": kind, "temperature": d(st.floats(0.05, 5.0) | st.sampled_from([0.7, 1.0, 1.5]))}
    if kind == "top_k":
        return {"kind": kind, "top_k": d(st.integers(1, vocab + 2)), "min_tokens_to_keep": d(KEEP)}
    if kind == "top_p":
        return {
            "kind": kind,
            "top_p": d(st.floats(0.01, 1.0) | st.sampled_from([0.5, 0.9, 1.0])),
            "min_tokens_to_keep": d(KEEP),
        }
    if kind == "min_p":
        return {
            "kind": kind,
            "min_p": d(st.floats(0.0, 1.0) | st.sampled_from([0.0, 0.05, 1.0])),
            "min_tokens_to_keep": d(KEEP),
        }
    if kind == "typical_p":
        return {
            "kind": kind,
            "typical_p": d(st.floats(0.01, 1.0) | st.sampled_from([0.5, 0.95, 1.0])),
            "min_tokens_to_keep": d(KEEP),
        }
    if kind in ("epsilon_cutoff", "eta_cutoff"):
        return {
            "kind": kind,
            kind: d(st.floats(1e-5, 0.9) | st.sampled_from([3e-4, 0.1])),
            "min_tokens_to_keep": d(KEEP),
        }
    if kind == "top_n_sigma":
        return {"kind": kind, "top_n_sigma": d(st.floats(0.05, 4.0) | st.sampled_from([1.0, 2.0]))}
    if kind == "repetition_penalty":
        return {"kind": kind, "repetition_penalty": d(st.floats(0.1, 5.0) | st.sampled_from([1.2, 2.0]))}
    if kind == "presence_frequency":
        return {
            "kind": kind,
            "presence_penalty": d(st.floats(-3, 3)),
            "frequency_penalty": d(st.floats(-3, 3)),
            "penalty_last_n": d(st.none() | st.integers(1, 8)),
        }
    if kind == "no_repeat_ngram":
        return {"kind": kind, "no_repeat_ngram_size": d(st.integers(1, 4))}
    if kind == "min_new_tokens":
        eos = d(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=3, unique=True))
        return {"kind": kind, "min_new_tokens": d(st.integers(0, 5)), "eos_token_id": eos}
    if kind == "logit_bias":
        return {
            "kind": kind,
            "logit_bias": d(st.dictionaries(st.integers(0, vocab - 1), BIASES, min_size=1, max_size=6)),
        }
    if kind == "bad_words":
        word = st.lists(st.integers(0, vocab - 1), min_size=1, max_size=3)
        return {"kind": kind, "bad_words_ids": d(st.lists(word, min_size=1, max_size=4))}
    raise AssertionError(f"no config strategy for kind '{kind}'")


KINDS = [
    "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_n_sigma",
    "repetition_penalty", "presence_frequency", "no_repeat_ngram", "min_new_tokens", "logit_bias", "bad_words",
]  # fmt: skip
#: kinds whose only effect is to remove tokens (every value is kept as is, or becomes -inf)
REMOVE_ONLY = {"top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_n_sigma"} | {
    "no_repeat_ngram", "min_new_tokens", "bad_words"
}  # fmt: skip
#: truncations that promise to keep (at least one) most likely token
KEEP_A_MAXIMUM = {"top_k", "top_p", "min_p", "epsilon_cutoff", "eta_cutoff", "top_n_sigma"}
#: constraints that may remove every token of a row; the chain must then raise
CAN_EMPTY_A_ROW = {"no_repeat_ngram", "min_new_tokens", "logit_bias", "bad_words"}


def test_every_builtin_kind_is_covered():
    assert set(KINDS) == {config.kind_name() for config in PROCESSOR_CONFIGS}


def _ids_and_context(data, batch: int, vocab: int) -> tuple[torch.Tensor, DecodeContext]:
    ids = data.draw(token_ids(batch, vocab, max_length=16), label="input_ids")
    return ids, DecodeContext(prompt_length=data.draw(st.integers(0, ids.shape[1]), label="prompt_length"))


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_invariants(kind, data):
    x = data.draw(logits(), label="logits")
    config = draw_config(data, kind, x.shape[-1])
    ids, context = _ids_and_context(data, *x.shape)
    before = x.clone()

    processor = decoders.Strategy.model_validate({"processors": [config]}).processors[0].build()
    processor.reset(context)
    direct = processor.process(ids, x)
    assert torch.equal(x, before), "the processor modified its input"
    assert direct.dtype == x.dtype
    assert not bool(torch.isnan(direct).any() or torch.isposinf(direct).any())

    alive = torch.isfinite(direct).any(dim=-1)
    for use_candidates in (True, False):
        chain = build([config], use_candidates=use_candidates)
        chain.reset(context)
        if not bool(alive.all()):
            assert kind in CAN_EMPTY_A_ROW, f"{kind} removed every token of a row"
            with pytest.raises(
                decoders.NonFiniteLogitsError, match=f"every token removed.*row {int((~alive).nonzero()[0])}"
            ):
                chain.process(ids, x)
            continue
        out = chain.process(ids, x)
        assert torch.equal(x, before), "the chain modified its input"
        assert_same(out, direct, x.dtype)

    if not bool(alive.all()):
        return
    probs = direct.double().softmax(dim=-1)
    assert bool(torch.isfinite(probs).all())
    assert torch.allclose(probs.sum(dim=-1), torch.ones(x.shape[0], dtype=torch.float64))
    if kind in REMOVE_ONLY:
        assert bool(((direct == x) | torch.isneginf(direct)).all()), "a value changed instead of being kept or removed"
    if kind in KEEP_A_MAXIMUM:
        maximal = x == x.amax(dim=-1, keepdim=True)
        assert bool((maximal & torch.isfinite(direct)).any(dim=-1).all()), "no most likely token survived"


@given(x=logits(), data=st.data())
def test_top_p_keeps_mass_p_with_a_minimal_set(x, data):
    p = data.draw(st.floats(0.01, 0.99) | st.sampled_from([0.1, 0.5, 0.9, 0.95]), label="top_p")
    out = build([{"kind": "top_p", "top_p": p}]).process(torch.zeros(x.shape[0], 0, dtype=torch.long), x)
    probs = x.double().softmax(dim=-1)
    kept = torch.isfinite(out)
    mass = (probs * kept).sum(dim=-1)
    least = torch.where(kept, probs, math.inf).amin(dim=-1)
    # the rule works on x's dtype: probabilities rounded to it, summed with float rounding
    tolerance = 1e-5 if x.dtype == torch.float32 else 2e-2
    assert bool((mass >= p - tolerance).all()), f"kept mass {mass.tolist()} < top_p {p}"
    assert bool((mass - least < p + tolerance).all()), "the kept set is not minimal"


@given(x=logits(), data=st.data())
def test_top_k_keeps_at_least_k(x, data):
    k = data.draw(st.integers(1, x.shape[-1] + 2), label="top_k")
    for use_candidates in (True, False):
        out = build([{"kind": "top_k", "top_k": k}], use_candidates=use_candidates).process(
            torch.zeros(x.shape[0], 0, dtype=torch.long), x
        )
        finite = torch.isfinite(x).sum(dim=-1)
        kept = torch.isfinite(out).sum(dim=-1)
        assert bool((kept >= torch.clamp(finite, max=k)).all())
        # and every kept token is at least as likely as every removed finite one
        lowest_kept = torch.where(torch.isfinite(out), x, math.inf).amin(dim=-1)
        highest_removed = torch.where(torch.isfinite(x) & ~torch.isfinite(out), x, NEG_INF).amax(dim=-1)
        assert bool((highest_removed < lowest_kept).all())


@given(x=logits(), t=st.floats(0.05, 5.0) | st.sampled_from([1e-2, 0.7, 1.5, 50.0]))
def test_temperature_keeps_the_argmax(x, t):
    out = build([{"kind": "temperature", "temperature": t}]).process(torch.zeros(x.shape[0], 0, dtype=torch.long), x)
    top = x.argmax(dim=-1, keepdim=True)
    assert torch.equal(out.gather(1, top), out.amax(dim=-1, keepdim=True))
    assert torch.equal(torch.isneginf(out), torch.isneginf(x))


@st.composite
def grid_logits(draw, dtype):
    """Logits on a coarse binary grid, so that adding an integer shift is exact in ``dtype``."""
    step, span = (0.25, 16) if dtype == torch.float32 else (0.5, 8)
    batch = draw(st.integers(1, 4))
    vocab = draw(st.integers(2, 40))
    values = st.integers(-int(span / step), int(span / step)).map(lambda i: i * step) | st.just(NEG_INF)
    rows = draw(st.lists(st.lists(values, min_size=vocab, max_size=vocab), min_size=batch, max_size=batch))
    x = torch.tensor(rows, dtype=torch.float32)
    x[:, 0] = torch.where(torch.isfinite(x[:, 0]), x[:, 0], 0.0)  # one finite value per row
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@given(data=st.data())
def test_min_p_ignores_a_constant_shift(dtype, data):
    """Probabilities do not change when every logit moves by the same amount, so neither does the kept set.
    (The shift is exact here; with rounding, a token exactly at the threshold could flip either way.)"""
    x = data.draw(grid_logits(dtype), label="logits")
    shift = data.draw(st.integers(-100, 100) if dtype == torch.float32 else st.integers(-8, 8), label="shift")
    min_p = data.draw(st.floats(0.0, 1.0) | st.sampled_from([0.05, 0.1, 0.5]), label="min_p")
    chain = build([{"kind": "min_p", "min_p": min_p}])
    ids = torch.zeros(x.shape[0], 0, dtype=torch.long)
    kept = torch.isfinite(chain.process(ids, x))
    assert torch.equal(torch.isfinite(chain.process(ids, x + shift)), kept)


@given(x=logits(), n=st.floats(0.1, 4.0) | st.sampled_from([1.0, 2.0]), power=st.integers(-3, 3))
def test_top_n_sigma_ignores_power_of_two_temperatures(x, n, power):
    """Dividing by 2^k scales every logit, the mean and the deviation exactly: the kept set must not move."""
    ids = torch.zeros(x.shape[0], 0, dtype=torch.long)
    plain = build([{"kind": "top_n_sigma", "top_n_sigma": n}]).process(ids, x)
    scaled = build([{"kind": "temperature", "temperature": 2.0**power}, {"kind": "top_n_sigma", "top_n_sigma": n}])
    assert torch.equal(torch.isfinite(scaled.process(ids, x)), torch.isfinite(plain))


@given(x=logits(dtypes=(torch.float32,)), n=st.floats(0.1, 4.0) | st.sampled_from([1.0, 2.0]), t=st.floats(0.05, 5.0))
def test_top_n_sigma_ignores_any_temperature_away_from_the_boundary(x, n, t):
    """For any temperature the kept set is the same, except for tokens so close to max − nσ that dividing by
    the temperature (one float32 rounding per logit) can move them across it; those are not compared."""
    ids = torch.zeros(x.shape[0], 0, dtype=torch.long)
    plain = torch.isfinite(build([{"kind": "top_n_sigma", "top_n_sigma": n}]).process(ids, x))
    chain = build([{"kind": "temperature", "temperature": t}, {"kind": "top_n_sigma", "top_n_sigma": n}])
    scaled = torch.isfinite(chain.process(ids, x))
    threshold, sigma = _sigma_threshold(x, n)
    values = x.double()
    margin = 1e-5 * (values.abs() + threshold.abs() + sigma)
    clear = torch.isfinite(values) & ((values - threshold).abs() > margin)
    assert torch.equal(scaled[clear], plain[clear])
    # and the kept set is the llama.cpp rule's, computed here independently in float64
    assert torch.equal(plain[clear], (values >= threshold)[clear])


def _sigma_threshold(x: torch.Tensor, n: float) -> tuple[torch.Tensor, torch.Tensor]:
    """max − n·σ per row (population σ over the finite logits), in float64, one row at a time."""
    thresholds, sigmas = [], []
    for row in x.double():
        finite = row[torch.isfinite(row)].tolist()
        mean = math.fsum(finite) / len(finite)
        sigma = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / len(finite))
        thresholds.append(max(finite) - n * sigma)
        sigmas.append(sigma)
    return torch.tensor(thresholds, dtype=torch.float64)[:, None], torch.tensor(sigmas, dtype=torch.float64)[:, None]


@given(data=st.data())
def test_presence_frequency_subtracts_counts_of_generated_tokens(data):
    x = data.draw(logits(dtypes=(torch.float32,), neg_inf=False), label="logits")
    batch, vocab = x.shape
    ids, context = _ids_and_context(data, batch, vocab)
    config = draw_config(data, "presence_frequency", vocab)
    chain = build([{"kind": "top_k", "top_k": min(vocab, 3)}, config]) if data.draw(st.booleans()) else build([config])
    chain.reset(context)
    out = chain.process(ids, x)
    expected = x.double().clone()
    for row in range(batch):
        generated = ids[row, context.prompt_length :].tolist()
        if config["penalty_last_n"] is not None:
            generated = generated[-config["penalty_last_n"] :]
        for token, count in Counter(generated).items():
            expected[row, token] -= count * config["frequency_penalty"] + config["presence_penalty"]
    if len(chain.processors) == 2:  # top_k first: compare where it kept tokens
        kept = torch.isfinite(out)
        assert bool(kept.sum(dim=-1).ge(1).all())
        out, expected = out[kept], expected[kept]
    assert torch.allclose(out.double(), expected, rtol=1e-6, atol=1e-5)


# ---- candidate path vs dense path ------------------------------------------------------------------------

CHAINS = {
    "balanced": [
        {"kind": "temperature", "temperature": 0.7},
        {"kind": "top_k", "top_k": 50},
        {"kind": "top_p", "top_p": 0.9},
    ],
    "top_k→min_p→typical": [
        {"kind": "top_k", "top_k": 40},
        {"kind": "min_p", "min_p": 0.05},
        {"kind": "typical_p", "typical_p": 0.9},
    ],
    "top_k→penalties→bias": [
        {"kind": "top_k", "top_k": 40},
        {"kind": "repetition_penalty", "repetition_penalty": 1.3},
        {"kind": "presence_frequency", "presence_penalty": 0.5, "frequency_penalty": 0.3},
        {"kind": "logit_bias", "logit_bias": {1: 2.0, 3: -1.5, 7: NEG_INF, 11: 1e4}},
    ],
    "llama_cpp": decoders.PRESETS["llama_cpp"]["processors"],
}
WIDE_VOCABS = st.integers(64, 400) | st.sampled_from([1000, 4096, 50257])


def _both_paths(processors, selector, data, x):
    """Scores and tokens from the candidate path and the dense path (same generators, same context)."""
    ids, context = _ids_and_context(data, *x.shape)
    seeds = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=x.shape[0], max_size=x.shape[0]), label="seeds")
    results = []
    for use_candidates in (True, False):
        chain = build(processors, selector, use_candidates=use_candidates)
        try:
            chain.reset(context)
            scores = chain.process(ids, x)
            chain.reset(context)
            tokens = chain.select(ids, x, generators(seeds))
        except decoders.NonFiniteLogitsError as exc:  # a row lost every token: both paths must say so
            results.append(str(exc))
            continue
        assert bool(torch.isfinite(scores.gather(1, tokens[:, None])).all()), "a removed token was selected"
        results.append((scores, tokens))
    return results


def _assert_paths_agree(candidate, dense, dtype) -> None:
    if isinstance(candidate, str) or isinstance(dense, str):  # an error: the same one on both paths
        assert candidate == dense, f"candidate path: {candidate!r}\ndense path: {dense!r}"
        return
    assert_same(candidate[0], dense[0], dtype)
    assert torch.equal(candidate[1], dense[1]), f"tokens differ: {candidate[1].tolist()} vs {dense[1].tolist()}"


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("selector", ["sample", "greedy"])
@given(data=st.data())
def test_candidates_match_dense_for_chains(name, selector, data):
    x = data.draw(logits(vocab=data.draw(WIDE_VOCABS, label="vocab")), label="logits")
    _assert_paths_agree(*_both_paths(CHAINS[name], selector, data, x), x.dtype)


@settings(max_examples=100)
@given(data=st.data())
def test_candidates_match_dense_for_random_chains(data):
    """top_k first (so that a candidate set exists), then any built-in kinds in any order."""
    x = data.draw(logits(vocab=data.draw(WIDE_VOCABS, label="vocab")), label="logits")
    vocab = x.shape[-1]
    top_k = {"kind": "top_k", "top_k": data.draw(st.integers(1, vocab // 4), label="top_k")}
    rest = data.draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=4), label="kinds")
    processors = [top_k] + [draw_config(data, kind, vocab) for kind in rest]
    _assert_paths_agree(*_both_paths(processors, data.draw(st.sampled_from(["sample", "greedy"])), data, x), x.dtype)
