"""Invariants over random rows: a survivor in every row, the input untouched, dense = candidate path, DRY = brute force."""

import torch
from hypothesis import given
from hypothesis import strategies as st

import decoders

NEG = float("-inf")
CONFIGS = [
    {"kind": "xtc", "xtc_threshold": 0.1, "xtc_probability": 0.7, "min_tokens_to_keep": 1},
    {"kind": "xtc", "xtc_threshold": 0.02, "xtc_probability": 1.0, "min_tokens_to_keep": 2},
    {"kind": "dynatemp", "temperature": 0.8, "dynatemp_range": 0.6, "dynatemp_exponent": 1.5},
    {"kind": "dynatemp", "temperature": 0.3, "dynatemp_range": 0.5},
    {"kind": "mirostat", "mirostat_tau": 2.0, "mirostat_eta": 0.3},
    {"kind": "dry", "dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2, "dry_sequence_breakers": [":", "de"]},
]


@st.composite
def rows(draw):
    """Logits [B, V] with some -inf (at least one finite per row), ties likely, and token histories [B, T]."""
    batch, vocab = draw(st.integers(1, 3)), draw(st.integers(2, 11))
    values = st.one_of(st.sampled_from([NEG, 0.0, 1.0, -1.0]), st.floats(-20, 20, width=32))
    logits = torch.tensor(draw(st.lists(st.lists(values, min_size=vocab, max_size=vocab), min_size=batch, max_size=batch)))
    logits[:, draw(st.integers(0, vocab - 1))] = draw(st.floats(-5, 5, width=32))
    length = draw(st.integers(0, 24))
    history = torch.tensor(draw(st.lists(st.lists(st.integers(0, 4), min_size=length, max_size=length), min_size=batch, max_size=batch)))
    return logits, history.view(batch, length)


def run_steps(config, logits, history, tokenizer, *, fast, steps=3):
    """A few steps of a chain (top-k over the whole row first when ``fast``), with reset and accept."""
    processors = ([{"kind": "top_k", "top_k": logits.shape[-1]}] if fast else []) + [config]
    chain = decoders.Strategy.model_validate({"processors": processors, "selector": {"kind": "sample"}}).build()
    generators = [torch.Generator().manual_seed(row) for row in range(logits.shape[0])]
    chain.reset(decoders.DecodeContext(tokenizer=tokenizer, generators=generators))
    outputs, ids = [], history
    for _ in range(steps):
        scores = chain.run(ids, logits)
        outputs.append(scores.to_dense() if isinstance(scores, decoders.Candidates) else scores)
        tokens = chain.choose(scores, generators)
        chain.accept(tokens)
        ids = torch.cat([ids, tokens.unsqueeze(-1)], dim=-1)
    return outputs


@given(rows(), st.sampled_from(CONFIGS))
def test_survivor_untouched_input_and_same_result_on_candidates(toy_tokenizer_for_hypothesis, data, config):
    logits, history = data
    before = logits.clone()
    dense = run_steps(config, logits, history, toy_tokenizer_for_hypothesis, fast=False)
    assert torch.equal(logits, before)  # input untouched
    for out in dense:
        assert torch.isfinite(out).any(dim=-1).all()  # at least one survivor per row
        assert not torch.isnan(out).any()
        assert (torch.isfinite(out) <= torch.isfinite(logits)).all()  # nothing removed comes back
    fast = run_steps(config, logits, history, toy_tokenizer_for_hypothesis, fast=True)
    for a, b in zip(dense, fast):
        assert torch.equal(a, b)


def brute_force_repeats(tokens, allowed, singles):
    """The definition, O(n²): for each candidate, the longest suffix that, followed by it, occurred before."""
    n, best = len(tokens), {}
    for j in range(n - 1):  # an earlier occurrence ends at j, the candidate is tokens[j + 1]
        length = 0
        while length <= j and tokens[j - length] == tokens[n - 1 - length] and tokens[n - 1 - length] not in singles:
            length += 1
        if length >= allowed and tokens[j + 1] not in singles:
            best[tokens[j + 1]] = max(best.get(tokens[j + 1], 0), length)
    return best


@given(st.lists(st.integers(0, 6), max_size=40), st.integers(1, 4))
def test_dry_penalties_match_the_definition(toy_tokenizer_for_hypothesis, tokens, allowed):
    # single-token breakers ':' (6) only, so that the brute force stays obvious
    config = {"kind": "dry", "dry_multiplier": 1.0, "dry_base": 2.0, "dry_allowed_length": allowed, "dry_sequence_breakers": [":"]}
    chain = decoders.Strategy.model_validate({"processors": [config]}).build()
    chain.reset(decoders.DecodeContext(tokenizer=toy_tokenizer_for_hypothesis))
    vocab = len(toy_tokenizer_for_hypothesis)
    out = chain.process(torch.tensor([tokens], dtype=torch.long).view(1, -1), torch.zeros(1, vocab))[0]
    expected = torch.zeros(vocab)
    for token, length in brute_force_repeats(tokens, allowed, {6, 10}).items():
        expected[token] = -(2.0 ** (length - allowed))
    assert torch.equal(out, expected)
