"""Parity with transformers' own logits processors, which are the oracle (see docs/semantics.md).

Every case builds our side through the public API (``Strategy.model_validate(...).build()`` then
``chain.process``), with the candidate-set fast path on and off, and also calls the processor object
directly; the result must be *exactly* transformers' (``-inf`` positions included) and keep the input dtype.

The "after top-k" cases run ``top_k`` first, so that (when the vocabulary is wider than the top-k window)
every later processor works on a ``[B, k]`` candidate set; that result must still be bit-identical to
transformers' dense pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

import decoders
from decoders.processors import Candidates, DecodeContext
from tests.logits_strategies import LARGE_VOCABS, NEG_INF, assert_same, build, logits, one_thread, token_ids  # noqa: F401 (fixture)

NO_IDS = torch.zeros(1, 0, dtype=torch.long)


@dataclass
class Case:
    """One parity case: our config, transformers' processor, and what both are called with."""

    config: dict[str, Any]
    oracle: Any
    input_ids: torch.Tensor
    context: DecodeContext = field(default_factory=DecodeContext)


def _ids(data, batch: int, vocab: int, **kwargs) -> torch.Tensor:
    return data.draw(token_ids(batch, vocab, **kwargs), label="input_ids")


def _min_keep(data) -> int:
    return data.draw(st.sampled_from([1, 1, 2, 3]), label="min_tokens_to_keep")


def _probability(data, low: float, high: float, favourites: list[float]) -> float:
    return data.draw(st.sampled_from(favourites) | st.floats(low, high), label="p")


# ---- one case builder per kind ---------------------------------------------------------------------------


def temperature_case(data, batch, vocab):
    t = data.draw(st.sampled_from([0.7, 1.0, 1.5, 0.05, 3.0]) | st.floats(0.05, 5.0), label="temperature")
    return Case({"kind": "temperature", "temperature": t}, TemperatureLogitsWarper(float(t)), NO_IDS.expand(batch, 0))


def top_k_case(data, batch, vocab):
    k = data.draw(st.integers(1, vocab + 3), label="top_k")
    keep = _min_keep(data)
    return Case(
        {"kind": "top_k", "top_k": k, "min_tokens_to_keep": keep},
        TopKLogitsWarper(k, min_tokens_to_keep=keep),
        NO_IDS.expand(batch, 0),
    )


def top_p_case(data, batch, vocab):
    # top_p = 1.0 is tested on its own below: it is the identity here, while transformers' class removes tokens
    # whose probability underflows to 0 (transformers' generate never applies it at 1.0)
    p = _probability(data, 0.01, 0.99, [0.1, 0.5, 0.8, 0.9, 0.95, 0.999])
    keep = _min_keep(data)
    return Case(
        {"kind": "top_p", "top_p": p, "min_tokens_to_keep": keep},
        TopPLogitsWarper(p, min_tokens_to_keep=keep),
        NO_IDS.expand(batch, 0),
    )


def min_p_case(data, batch, vocab):
    p = _probability(data, 0.0, 1.0, [0.0, 0.05, 0.1, 0.5, 1.0])
    keep = _min_keep(data)
    return Case(
        {"kind": "min_p", "min_p": p, "min_tokens_to_keep": keep},
        MinPLogitsWarper(p, min_tokens_to_keep=keep),
        NO_IDS.expand(batch, 0),
    )


def typical_p_case(data, batch, vocab):
    p = _probability(data, 0.01, 0.99, [0.2, 0.5, 0.9, 0.95])
    keep = _min_keep(data)
    return Case(
        {"kind": "typical_p", "typical_p": p, "min_tokens_to_keep": keep},
        TypicalLogitsWarper(p, min_tokens_to_keep=keep),
        NO_IDS.expand(batch, 0),
    )


def epsilon_case(data, batch, vocab):
    eps = _probability(data, 1e-5, 0.9, [3e-4, 0.01, 0.1, 0.3])
    keep = _min_keep(data)
    return Case(
        {"kind": "epsilon_cutoff", "epsilon_cutoff": eps, "min_tokens_to_keep": keep},
        EpsilonLogitsWarper(eps, min_tokens_to_keep=keep),
        NO_IDS.expand(batch, 0),
    )


def eta_case(data, batch, vocab):
    eta = _probability(data, 1e-5, 0.9, [3e-4, 0.01, 0.1, 0.3])
    keep = _min_keep(data)
    return Case(
        {"kind": "eta_cutoff", "eta_cutoff": eta, "min_tokens_to_keep": keep},
        EtaLogitsWarper(eta, min_tokens_to_keep=keep),
        NO_IDS.expand(batch, 0),
    )


def repetition_case(data, batch, vocab):
    penalty = data.draw(st.sampled_from([1.0, 1.2, 2.0, 0.8]) | st.floats(0.1, 5.0), label="penalty")
    return Case(
        {"kind": "repetition_penalty", "repetition_penalty": penalty},
        RepetitionPenaltyLogitsProcessor(float(penalty)),
        _ids(data, batch, vocab),
    )


def no_repeat_case(data, batch, vocab):
    n = data.draw(st.integers(1, 4), label="n")
    return Case(
        {"kind": "no_repeat_ngram", "no_repeat_ngram_size": n},
        NoRepeatNGramLogitsProcessor(n),
        _ids(data, batch, vocab, max_length=30, alphabet=data.draw(st.sampled_from([2, 3, 5]))),
    )


def min_new_tokens_case(data, batch, vocab):
    ids = _ids(data, batch, vocab, max_length=12)
    prompt_length = data.draw(st.integers(0, ids.shape[1]), label="prompt_length")
    minimum = data.draw(st.integers(0, 6), label="min_new_tokens")
    eos = data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=3, unique=True), label="eos")
    config = {"kind": "min_new_tokens", "min_new_tokens": minimum}
    context = DecodeContext(prompt_length=prompt_length)
    if data.draw(st.booleans(), label="eos in config"):
        config["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    else:  # the model's EOS ids, from the generation context
        context = DecodeContext(prompt_length=prompt_length, eos_token_ids=tuple(eos))
    return Case(config, MinNewTokensLengthLogitsProcessor(prompt_length, minimum, eos), ids, context)


BIASES = st.sampled_from([NEG_INF, 1e4, -1e4, 0.0, 1e-6, 2.5, -3.0]) | st.floats(-20, 20)


def logit_bias_case(data, batch, vocab):
    bias = data.draw(st.dictionaries(st.integers(0, vocab - 1), BIASES, min_size=1, max_size=6), label="logit_bias")
    oracle = SequenceBiasLogitsProcessor({(token,): float(value) for token, value in bias.items()})
    return Case({"kind": "logit_bias", "logit_bias": bias}, oracle, NO_IDS.expand(batch, 0))


def bad_words_case(data, batch, vocab):
    eos = vocab - 1  # an EOS id that is in no bad word (transformers drops a bad word that is just EOS)
    word = st.lists(st.integers(0, vocab - 2), min_size=1, max_size=3)
    words = data.draw(st.lists(word, min_size=1, max_size=4), label="bad_words_ids")
    ids = _ids(data, batch, vocab, max_length=8, alphabet=4)
    if data.draw(st.booleans(), label="end with a bad word's prefix"):  # so multi-token words fire
        prefix = torch.tensor(words[data.draw(st.integers(0, len(words) - 1))][:-1], dtype=torch.long)
        rows = torch.tensor(data.draw(st.lists(st.booleans(), min_size=batch, max_size=batch)))
        tail = torch.where(rows[:, None], prefix.expand(batch, -1), torch.randint(vocab, (batch, len(prefix))))
        ids = torch.cat([ids, tail], dim=1)
    return Case({"kind": "bad_words", "bad_words_ids": words}, NoBadWordsLogitsProcessor(words, eos_token_id=eos), ids)


CASES = {
    "temperature": temperature_case,
    "top_k": top_k_case,
    "top_p": top_p_case,
    "min_p": min_p_case,
    "typical_p": typical_p_case,
    "epsilon_cutoff": epsilon_case,
    "eta_cutoff": eta_case,
    "repetition_penalty": repetition_case,
    "no_repeat_ngram": no_repeat_case,
    "min_new_tokens": min_new_tokens_case,
    "logit_bias": logit_bias_case,
    "bad_words": bad_words_case,
}
#: kinds that may legitimately remove every token of a row (the chain must then raise, not return -inf rows)
CAN_EMPTY_A_ROW = {"no_repeat_ngram", "min_new_tokens", "logit_bias", "bad_words"}


def _check(chain: decoders.Chain, case: Case, x: torch.Tensor, expected: torch.Tensor) -> None:
    """Our chain on ``x`` gives ``expected`` exactly, or raises when transformers left a row with no token."""
    chain.reset(case.context)
    before = x.clone()
    dead_row = not bool(torch.isfinite(expected).any(dim=-1).all())
    if dead_row:
        with pytest.raises(decoders.NonFiniteLogitsError, match="every token removed"):
            chain.process(case.input_ids, x)
    else:
        assert_same(chain.process(case.input_ids, x), expected, x.dtype)
    assert torch.equal(x, before), "the input logits were modified"


@pytest.mark.parametrize("kind", list(CASES))
@given(data=st.data())
def test_processor_matches_transformers(kind, data):
    x = data.draw(logits(min_vocab=3 if kind == "bad_words" else 2), label="logits")
    case = CASES[kind](data, *x.shape)
    expected = case.oracle(case.input_ids, x.clone())
    assert expected.dtype == x.dtype
    for use_candidates in (True, False):
        _check(build([case.config], use_candidates=use_candidates), case, x, expected)
    # the processor object itself, called directly
    processor = decoders.Strategy.model_validate({"processors": [case.config]}).processors[0].build()
    processor.reset(case.context)
    if kind in CAN_EMPTY_A_ROW and not bool(torch.isfinite(expected).any(dim=-1).all()):
        return
    assert_same(processor.process(case.input_ids, x), expected, x.dtype)


#: wider vocabularies than the default mix, so that the candidate path meets real sizes more often
WIDER_VOCABS = st.integers(0, 5).flatmap(
    lambda c: st.sampled_from(LARGE_VOCABS) if c == 5 else st.integers(65, 600) if c >= 3 else st.integers(3, 64)
)


@settings(max_examples=100)
@pytest.mark.parametrize("kind", [k for k in CASES if k != "top_k"])
@given(data=st.data())
def test_after_top_k_matches_transformers(kind, data):
    """top_k first, then ``kind`` — on the candidate set when the vocabulary is wide enough."""
    x = data.draw(logits(vocab=data.draw(WIDER_VOCABS, label="vocab")), label="logits")
    vocab = x.shape[-1]
    k = data.draw(st.integers(1, max(1, vocab // 3)) | st.integers(1, vocab + 2), label="top_k")
    case = CASES[kind](data, *x.shape)
    expected = case.oracle(case.input_ids, TopKLogitsWarper(k)(case.input_ids, x.clone()))
    for use_candidates in (True, False):
        _check(build([{"kind": "top_k", "top_k": k}, case.config], use_candidates=use_candidates), case, x, expected)


def test_candidate_path_is_really_taken():
    """The after-top-k parity above is only worth something if top-k does hand over a candidate set."""
    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(1000, (3, 10), generator=torch.Generator().manual_seed(1))
    for config in (
        {"kind": "top_p", "top_p": 0.9},
        {"kind": "min_p", "min_p": 0.1},
        {"kind": "typical_p", "typical_p": 0.9},
        {"kind": "epsilon_cutoff", "epsilon_cutoff": 0.01},
        {"kind": "eta_cutoff", "eta_cutoff": 0.01},
        {"kind": "temperature", "temperature": 0.7},
        {"kind": "repetition_penalty", "repetition_penalty": 1.3},
        {"kind": "no_repeat_ngram", "no_repeat_ngram_size": 2},
        {"kind": "logit_bias", "logit_bias": {5: -1.0}},
        {"kind": "bad_words", "bad_words_ids": [[5]]},
        {"kind": "min_new_tokens", "min_new_tokens": 2, "eos_token_id": 0},
    ):
        scores = build([{"kind": "top_k", "top_k": 20}, config]).run(ids, x)
        assert isinstance(scores, Candidates), config["kind"]
        assert scores.values.shape[-1] < 1000


# ---- hand-made edge cases --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_top_p_ties_at_the_threshold(dtype):
    """Four equal tokens, top_p 0.5: transformers removes two of the tied tokens (which two is its sort's
    choice); ours must remove the same two, dense or after top-k on a candidate set."""
    x = torch.zeros(2, 64, dtype=dtype)
    x[:, :40] = 1.0
    x[1, 40:] = NEG_INF
    expected = TopPLogitsWarper(0.5)(NO_IDS, TopKLogitsWarper(40)(NO_IDS, x))
    for use_candidates in (True, False):
        chain = build([{"kind": "top_k", "top_k": 40}, {"kind": "top_p", "top_p": 0.5}], use_candidates=use_candidates)
        assert_same(chain.process(NO_IDS.expand(2, 0), x), expected, dtype)


def test_top_p_one_is_the_identity():
    """top_p = 1 keeps every token, even those whose probability underflows to 0 in float32."""
    x = torch.tensor([[0.0, -200.0, -1e4, NEG_INF, 5.0]])
    for use_candidates in (True, False):
        assert_same(build([{"kind": "top_p", "top_p": 1.0}], use_candidates=use_candidates).process(NO_IDS, x), x)
    assert_same(build([{"kind": "typical_p", "typical_p": 1.0}]).process(NO_IDS, x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_eta_threshold_in_the_input_dtype(dtype):
    """transformers keeps eta as a float32 tensor; the threshold must round exactly as it does in every dtype
    (a threshold computed from eta rounded to bfloat16 first differs on a few percent of these rows)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        eta = float(torch.rand(1, generator=g)) * 0.5
        x = (torch.randn(4, 50, generator=g) * float(torch.rand(1, generator=g)) * 4).to(dtype)
        expected = EtaLogitsWarper(eta)(NO_IDS, x)
        assert_same(build([{"kind": "eta_cutoff", "eta_cutoff": eta}]).process(NO_IDS.expand(4, 0), x), expected, dtype)


def test_logit_bias_with_several_bans_after_top_k():
    """Two -inf biases and a finite one, applied on a candidate set: no NaN (0 · -inf) may appear."""
    x = torch.arange(100, dtype=torch.float32).flip(0).expand(2, -1).contiguous()
    bias = {0: NEG_INF, 1: NEG_INF, 2: 1.5}
    expected = SequenceBiasLogitsProcessor({(t,): b for t, b in bias.items()})(NO_IDS, TopKLogitsWarper(5)(NO_IDS, x))
    for use_candidates in (True, False):
        chain = build(
            [{"kind": "top_k", "top_k": 5}, {"kind": "logit_bias", "logit_bias": bias}], use_candidates=use_candidates
        )
        assert_same(chain.process(NO_IDS.expand(2, 0), x), expected)


@pytest.mark.parametrize("use_candidates", [True, False])
def test_penalties_ignore_ids_the_model_cannot_output(use_candidates):
    """An embedding table can be larger than the output layer: transformers ignores such ids, so do we."""
    ids = torch.tensor([[3, 12, 11, 3], [10, 0, 1, 2]])
    x = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))
    expected = RepetitionPenaltyLogitsProcessor(1.5)(ids, x)
    chain = build([{"kind": "repetition_penalty", "repetition_penalty": 1.5}], use_candidates=use_candidates)
    assert_same(chain.process(ids, x), expected)
    chain = build([{"kind": "presence_frequency", "presence_penalty": 1.0}], use_candidates=use_candidates)
    assert_same(chain.process(ids, x), x - torch.tensor([[0.0, 0, 0, 1] + [0] * 6, [1.0, 1, 1] + [0] * 7]))


def test_repetition_penalty_counts_the_prompt_and_each_token_once():
    ids = torch.tensor([[3, 3, 3, 1]])
    x = torch.tensor([[1.0, 2.0, -2.0, 4.0, 0.0]])
    expected = RepetitionPenaltyLogitsProcessor(2.0)(ids, x)
    assert_same(build([{"kind": "repetition_penalty", "repetition_penalty": 2.0}]).process(ids, x), expected)
    assert expected.tolist() == [[1.0, 1.0, -2.0, 2.0, 0.0]]
