"""Tables of probabilities in → probabilities out, worked out by hand from each sampler's definition.

Every case runs through the host's public API: a strategy with the plugin's kind, built into a chain, reset
with a DecodeContext, on the dense path and on the candidate path (after a top-k that keeps every token).
"""

import math

import pytest
import torch

import decoders

NEG = float("-inf")


def chain_for(processor: dict, vocab: int | None = None, *, fast: bool = False):
    """A chain running ``processor`` (after a top-k over the whole row when ``fast``: candidate sets)."""
    processors = ([{"kind": "top_k", "top_k": vocab}] if fast else []) + [processor]
    return decoders.Strategy.model_validate({"processors": processors, "selector": {"kind": "sample"}}).build()


def run(processor: dict, probs, *, input_ids=None, context=None, fast=False):
    """Processed probabilities of each row (rows of ``probs`` are probabilities, 0 for removed)."""
    logits = torch.tensor(probs, dtype=torch.float32).log()
    chain = chain_for(processor, logits.shape[-1], fast=fast)
    chain.reset(context or decoders.DecodeContext())
    ids = torch.zeros(logits.shape[0], 0, dtype=torch.long) if input_ids is None else torch.tensor(input_ids)
    return chain.process(ids, logits).softmax(dim=-1)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=1e-5)


both_paths = pytest.mark.parametrize("fast", [False, True], ids=["dense", "candidates"])

# ---- XTC ----------------------------------------------------------------------------------------------

XTC_TABLE = [
    # threshold, min_keep, probabilities in, probabilities out
    (0.2, 1, [0.5, 0.3, 0.15, 0.05], [0.0, 0.6, 0.3, 0.1]),  # 0.5 and 0.3 reach it: 0.5 goes
    (0.1, 1, [0.5, 0.3, 0.15, 0.05], [0.0, 0.0, 0.75, 0.25]),  # three reach it: keep the least likely, 0.15
    (0.25, 1, [0.7, 0.2, 0.1], [0.7, 0.2, 0.1]),  # only one reaches it: nothing happens
    (0.5, 1, [0.5, 0.5, 0.0], [0.5, 0.5, 0.0]),  # two reach it, tied: the least likely (both) stay
    (0.1, 3, [0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]),  # would leave 2 < min_tokens_to_keep 3
    (0.1, 2, [0.5, 0.3, 0.15, 0.05], [0.0, 0.0, 0.75, 0.25]),  # leaves exactly 2
    (0.25, 1, [0.0, 0.35, 0.0, 0.35, 0.3], [0.0, 0.0, 0.0, 0.0, 1.0]),  # order in the row does not matter
    (0.25, 1, [0.0, 0.4, 0.0, 0.3, 0.3], [0.0, 0.0, 0.0, 0.5, 0.5]),  # ties with the least likely all stay
]


@both_paths
@pytest.mark.parametrize("threshold, min_keep, probs, expected", XTC_TABLE)
def test_xtc_table(threshold, min_keep, probs, expected, fast):
    config = {"kind": "xtc", "xtc_threshold": threshold, "xtc_probability": 1.0, "min_tokens_to_keep": min_keep}
    close(run(config, [probs], fast=fast)[0], expected)


@both_paths
def test_xtc_draws_once_per_row_from_that_rows_generator(fast):
    seeds = list(range(12))
    probability = 0.5
    draws = [torch.rand(1, dtype=torch.float64, generator=torch.Generator().manual_seed(s)).item() for s in seeds]
    applies = [u <= probability for u in draws]
    assert any(applies) and not all(applies)  # the seeds exercise both outcomes
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    config = {"kind": "xtc", "xtc_threshold": 0.2, "xtc_probability": probability}
    out = run(config, [[0.5, 0.3, 0.15, 0.05]] * len(seeds), context=decoders.DecodeContext(generators=generators), fast=fast)
    for row, applied in enumerate(applies):
        close(out[row], [0.0, 0.6, 0.3, 0.1] if applied else [0.5, 0.3, 0.15, 0.05])
    # each generator advanced by exactly one draw
    after = [g.initial_seed() for g in generators]
    assert after == seeds
    next_draws = [torch.rand(1, dtype=torch.float64, generator=g).item() for g in generators]
    expected_next = []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        torch.rand(1, dtype=torch.float64, generator=g)
        expected_next.append(torch.rand(1, dtype=torch.float64, generator=g).item())
    assert next_draws == expected_next


def test_xtc_without_generators_uses_the_global_rng():
    config = {"kind": "xtc", "xtc_threshold": 0.2, "xtc_probability": 0.5}
    torch.manual_seed(0)
    first = run(config, [[0.5, 0.3, 0.15, 0.05]] * 16)
    torch.manual_seed(0)
    again = run(config, [[0.5, 0.3, 0.15, 0.05]] * 16)
    assert torch.equal(first, again)
    applied = first[:, 0] == 0
    assert applied.any() and not applied.all()


# ---- DRY ----------------------------------------------------------------------------------------------
# Toy vocabulary (conftest.ToyTokenizer): a=0 b=1 c=2 d=3 e=4 \n=5 :=6 "=7 *=8 x=9 "::"=10.
A, B, C, D, E, COLON, X, COLONS = 0, 1, 2, 3, 4, 6, 9, 10
V = 11


def dry_logit_shift(toy_tokenizer, context, fast=False, **params):
    """logit after DRY − logit before, per token, for a flat row (all logits 0)."""
    config = {"kind": "dry", "dry_multiplier": 1.0, "dry_base": 2.0, "dry_allowed_length": 2, **params}
    chain = chain_for(config, V, fast=fast)
    chain.reset(decoders.DecodeContext(tokenizer=toy_tokenizer))
    return chain.process(torch.tensor([context]), torch.zeros(1, V))[0].tolist()


def shift(**penalties):
    row = [0.0] * V
    for name, amount in penalties.items():
        row[{"a": A, "b": B, "c": C, "d": D, "colon": COLON, "colons": COLONS}[name]] = -amount
    return row


DRY_TABLE = [
    # context, extra parameters, expected logit shift (multiplier 1, base 2, allowed length 2)
    ([A, B, C, A, B], {}, shift(c=1)),  # "a b" repeats, followed by c: L = 2, 1 · 2^0
    ([A, B, C, D, A, B, C], {}, shift(d=2)),  # "a b c" repeats: L = 3, 2^1
    ([A, B, C, A], {}, shift()),  # L = 1 < allowed length
    ([A, B, C, A, B, C, A, B], {}, shift(c=8)),  # "a b c a b" (overlapping) repeats: L = 5, 2^3
    ([A, B, C, A, B], {"dry_allowed_length": 3}, shift()),
    ([A, B, C, A, B], {"dry_multiplier": 0.5, "dry_base": 3.0}, shift(c=0.5)),
    ([A, B, C, A, B], {"dry_penalty_last_n": 3}, shift()),  # only "c a b" is looked at
    ([A, B, C, A, B], {"dry_penalty_last_n": 5}, shift(c=1)),
    # a breaker inside the repeat: "a b : c" repeats (L = 4 → 2^2 on a), but the suffix stops at ':' → L ≤ 1
    ([A, B, COLON, C, A, B, COLON, C], {"dry_sequence_breakers": []}, shift(a=4)),
    ([A, B, COLON, C, A, B, COLON, C], {}, shift()),
    # the candidate is itself a breaker: never penalised
    ([A, B, COLON, A, B], {"dry_sequence_breakers": []}, shift(colon=1)),
    ([A, B, COLON, A, B], {"dry_sequence_breakers": [":"]}, shift()),
    # a token whose text contains a breaker ("::") is a breaker too, as in llama.cpp
    ([A, B, COLONS, A, B], {"dry_sequence_breakers": [":"]}, shift()),
    ([A, B, COLONS, A, B], {"dry_sequence_breakers": ["*"]}, shift(colons=1)),
    # a two-token breaker "d e": "d e x a b" repeats (L = 5 → 8 on c) but the suffix stops after "d e" → L = 3
    ([D, E, X, A, B, C, D, E, X, A, B], {"dry_sequence_breakers": []}, shift(c=8)),
    ([D, E, X, A, B, C, D, E, X, A, B], {"dry_sequence_breakers": ["de"]}, shift(c=2)),
]


@both_paths
@pytest.mark.parametrize("context, params, expected", DRY_TABLE)
def test_dry_table(toy_tokenizer, context, params, expected, fast):
    assert dry_logit_shift(toy_tokenizer, context, fast=fast, **params) == expected


@both_paths
def test_dry_skips_a_batchs_left_padding(toy_tokenizer, fast):
    """Padding columns are not text: "a b c a b" as the padding of "c" must not make a repeat."""
    config = {"kind": "dry", "dry_multiplier": 1.0, "dry_base": 2.0, "dry_allowed_length": 2}
    chain = chain_for(config, V, fast=fast)
    context = torch.tensor([[A, B, C, A, B, C]])
    for padding, expected in (([0], shift(a=2)), ([5], shift())):  # "a b c" repeats → L = 3 → 2 on a
        chain.reset(decoders.DecodeContext(tokenizer=toy_tokenizer, padding=padding))
        assert chain.process(context, torch.zeros(1, V))[0].tolist() == expected


def test_dry_exponent_is_clamped_below_float32_max(toy_tokenizer):
    context = [A, B] * 60
    out = dry_logit_shift(toy_tokenizer, context, dry_base=100.0)
    # L = 118, exponent 116 clamped to int(88.7228391 / ln 100) = 19
    assert out[A] == pytest.approx(-(100.0**19), rel=1e-6) and math.isfinite(out[A])


# ---- dynamic temperature --------------------------------------------------------------------------------


def dynatemp(probs, temperature=1.0, range_=0.5, exponent=1.0, fast=False):
    config = {"kind": "dynatemp", "temperature": temperature, "dynatemp_range": range_, "dynatemp_exponent": exponent}
    return run(config, [probs], fast=fast)[0]


def power(probs, t):
    """softmax(log p / t): what dividing the logits by t does to probabilities."""
    weights = [p ** (1 / t) if p > 0 else 0.0 for p in probs]
    return [w / sum(weights) for w in weights]


@both_paths
def test_dynatemp_at_maximum_entropy_uses_the_top_of_the_range(fast):
    # uniform over the two tokens left: H / ln 2 = 1 → T = 1 + 0.5
    chain = chain_for({"kind": "dynatemp", "temperature": 1.0, "dynatemp_range": 0.5}, 3, fast=fast)
    logits = torch.tensor([[2.0, 2.0, NEG]])
    torch.testing.assert_close(chain.process(torch.zeros(1, 0, dtype=torch.long), logits), torch.tensor([[2 / 1.5, 2 / 1.5, NEG]]))


@both_paths
def test_dynatemp_at_zero_entropy_uses_the_bottom_of_the_range(fast):
    # p = (1, 0, 0) (the others underflow): H = 0 → T = 1 − 0.5
    chain = chain_for({"kind": "dynatemp", "temperature": 1.0, "dynatemp_range": 0.5}, 3, fast=fast)
    out = chain.process(torch.zeros(1, 0, dtype=torch.long), torch.tensor([[0.0, -1000.0, -900.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, -2000.0, -1800.0]]))


@both_paths
def test_dynatemp_bottom_of_range_at_zero_is_greedy(fast):
    chain = chain_for({"kind": "dynatemp", "temperature": 0.5, "dynatemp_range": 1.0}, 3, fast=fast)
    out = chain.process(torch.zeros(1, 0, dtype=torch.long), torch.tensor([[0.0, -1000.0, -900.0]]))
    assert out.tolist() == [[0.0, NEG, NEG]]


H = 1.5 * math.log(2)  # entropy of (0.5, 0.25, 0.25)
NORMALISED = H / math.log(3)


@both_paths
@pytest.mark.parametrize(
    "exponent, t",
    [(1.0, 0.5 + 1.0 * NORMALISED), (2.0, 0.5 + 1.0 * NORMALISED**2), (0.5, 0.5 + 1.0 * NORMALISED**0.5)],
)
def test_dynatemp_in_between(exponent, t, fast):
    close(dynatemp([0.5, 0.25, 0.25], exponent=exponent, fast=fast), power([0.5, 0.25, 0.25], t))


@both_paths
def test_dynatemp_range_zero_is_plain_temperature(fast):
    close(dynatemp([0.5, 0.25, 0.25], temperature=0.7, range_=0.0, fast=fast), power([0.5, 0.25, 0.25], 0.7))


def test_dynatemp_leaves_a_single_token_row_alone():
    assert dynatemp([1.0, 0.0, 0.0]).tolist() == [1.0, 0.0, 0.0]


# ---- mirostat v2 -----------------------------------------------------------------------------------------

P = [0.5, 0.25, 0.125, 0.125]  # surprises 1, 2, 3, 3 bits


@both_paths
def test_mirostat_mu_over_several_steps(fast):
    tau, eta = 1.1, 0.5  # μ starts at 2.2: between the surprises 2 and 3
    chain = chain_for({"kind": "mirostat", "mirostat_tau": tau, "mirostat_eta": eta}, 4, fast=fast)
    chain.reset(decoders.DecodeContext(generators=[torch.Generator().manual_seed(0)]))
    mirostat = chain.processors[-1]
    logits = torch.tensor([P]).log()
    ids = torch.zeros(1, 0, dtype=torch.long)
    steps = [
        # μ before, probabilities out, chosen token, surprise of the chosen token (bits, renormalised)
        (2.2, [2 / 3, 1 / 3, 0, 0], 1, math.log2(3)),
        (2.2 - eta * (math.log2(3) - tau), [1, 0, 0, 0], 0, 0.0),  # 1.9575: only the 1-bit token stays
        (2.2 - eta * (math.log2(3) - tau) - eta * (0.0 - tau), [2 / 3, 1 / 3, 0, 0], 0, math.log2(3 / 2)),
    ]
    for mu, expected, token, _ in steps:
        assert mirostat.mu.tolist() == pytest.approx([mu])
        close(chain.process(ids, logits)[0].softmax(-1), expected)
        chain.accept(torch.tensor([token]))
    mu = steps[-1][0] - eta * (steps[-1][3] - tau)
    assert mirostat.mu.tolist() == pytest.approx([mu])
    # a token this processor removed (e.g. a finished row's padding) leaves μ alone
    chain.process(ids, logits)
    chain.accept(torch.tensor([3]))
    assert mirostat.mu.tolist() == pytest.approx([mu])
    # reset starts again at 2τ
    chain.reset(decoders.DecodeContext(generators=[torch.Generator()]))
    assert mirostat.mu.tolist() == [2 * tau]


@both_paths
def test_mirostat_keeps_the_most_likely_token_when_all_surprises_exceed_mu(fast):
    out = run({"kind": "mirostat", "mirostat_tau": 0.5, "mirostat_eta": 0.1}, [[0.3, 0.4, 0.3]], fast=fast)
    close(out[0], [0.0, 1.0, 0.0])  # μ = 1 bit < −log2 0.4


def test_mirostat_keeps_one_mu_per_row():
    chain = chain_for({"kind": "mirostat", "mirostat_tau": 1.1, "mirostat_eta": 0.5})
    chain.reset(decoders.DecodeContext(generators=[torch.Generator(), torch.Generator()]))
    logits = torch.tensor([P, P]).log()
    chain.process(torch.zeros(2, 0, dtype=torch.long), logits)
    chain.accept(torch.tensor([0, 1]))  # surprises log2(3/2) and log2(3) under (2/3, 1/3)
    assert chain.processors[0].mu.tolist() == pytest.approx(
        [2.2 - 0.5 * (math.log2(1.5) - 1.1), 2.2 - 0.5 * (math.log2(3) - 1.1)]
    )
