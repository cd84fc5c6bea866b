"""Each metric on hand-made inputs whose value is known."""

import functools
import inspect
import math

import numpy as np
import pytest
import torch

import decoders
from decoders import metrics


class FixedLM(torch.nn.Module):
    """A 'model' whose next-token distribution is always the same: probabilities ``probs`` over 4 tokens."""

    def __init__(self, probs):
        super().__init__()
        self.log_probs = torch.nn.Parameter(torch.tensor(probs).log(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        logits = self.log_probs.expand(*input_ids.shape, -1)
        return type("Output", (), {"logits": logits})()


def test_perplexity_of_a_fixed_distribution_is_known():
    model = FixedLM([0.5, 0.25, 0.125, 0.125])
    # tokens 0 and 1: NLLs ln 2 and ln 4, mean 1.5 ln 2, so perplexity 2^1.5
    assert metrics.perplexity(model, [[3], [2, 2]], [[0], [1]]) == pytest.approx(2**1.5)
    nlls = metrics.continuation_nlls((model, None), [[3]], [[0, 1, 2]], batch_size=1)
    assert nlls[0] == pytest.approx([math.log(2), math.log(4), math.log(8)])


def test_perplexity_pads_batches_without_changing_scores(tiny_gpt2_dir):
    loaded = decoders.load_model(tiny_gpt2_dir)
    prompts, continuations = [[5, 6, 7, 8, 9], [5]], [[10, 11], [12, 13, 14, 15]]
    together = metrics.continuation_nlls(loaded, prompts, continuations, batch_size=2)
    alone = metrics.continuation_nlls(loaded, prompts, continuations, batch_size=1)
    assert [len(row) for row in together] == [2, 4]
    assert together == [pytest.approx(row, abs=1e-5) for row in alone]


def test_perplexity_rejects_empty_prompts_and_nothing_to_score():
    model = FixedLM([0.25] * 4)
    with pytest.raises(ValueError, match="at least one token"):
        metrics.perplexity(model, [[]], [[1]])
    with pytest.raises(ValueError, match="no tokens"):
        metrics.perplexity(model, [[1]], [[]])


def test_self_bleu():
    same = ["the cat sat on the mat today", "the cat sat on the mat today", "the cat sat on the mat today"]
    assert metrics.self_bleu(same) == pytest.approx(1.0)
    # no shared unigram at all: every precision is 0 (smoothed to ~0)
    assert metrics.self_bleu(["alpha beta gamma delta", "one two three four"]) < 1e-3
    # hand computation: "a b c d" against "a b c e" (and vice versa): precisions 3/4, 2/3, 1/2, 0 → smoothed 0.1/1
    expected = math.exp((math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2) + math.log(0.1)) / 4)
    assert metrics.self_bleu(["a b c d", "a b c e"]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="two texts"):
        metrics.self_bleu(["only one"])


def test_zipf_coefficient_recovers_the_exponent():
    # frequencies exactly 1000 / rank^s for s = 1.5 (rounded), ranks 1..6
    s = 1.5
    tokens = [rank for rank in range(1, 7) for _ in range(round(1000 / rank**s))]
    assert metrics.zipf_coefficient([tokens[:500], tokens[500:]]) == pytest.approx(s, abs=0.01)
    assert metrics.zipf_coefficient([[1, 2, 3, 4]]) == pytest.approx(0.0)  # all equally frequent
    assert metrics.rank_frequencies([["a", "b", "a"]]) == [2, 1]
    with pytest.raises(ValueError, match="two distinct"):
        metrics.zipf_coefficient([[7, 7, 7]])


@pytest.mark.parametrize(
    ("tokens", "loops"),
    [
        ([1, 2, 3, 3, 3], True),  # one token three times
        ([9, 1, 2, 3, 1, 2, 3, 1, 2, 3], True),  # a 3-token phrase three times
        ([1, 2, 3, 1, 2, 3], False),  # only twice
        ([1, 2, 1, 2, 1, 2, 5], False),  # a loop that does not reach the end
        ([], False),
    ],
)
def test_ends_in_loop(tokens, loops):
    assert metrics.ends_in_loop(tokens) is loops


def test_repetition_pct():
    assert metrics.repetition_pct([[1, 1, 1], [1, 2, 3], [4, 5, 4, 5, 4, 5], [1]]) == 50.0
    assert metrics.repetition_pct([[1, 2, 1, 2]], min_repeats=2) == 100.0


def test_distinct_n_and_rep_n():
    sequences = [[1, 2, 3, 1, 2, 3], [1, 2, 4]]
    # bigrams: 12 23 31 12 23 | 12 24 → 7 in all, distinct {12, 23, 31, 24} = 4
    assert metrics.distinct_n(sequences, 2) == pytest.approx(4 / 7)
    assert metrics.distinct_n(sequences, 1) == pytest.approx(4 / 9)
    # rep-2: first sequence 1 − 3/5, second 1 − 2/2 = 0 → mean 0.2
    assert metrics.rep_n(sequences, 2) == pytest.approx(0.2)
    assert metrics.rep_n([[1, 2, 3, 4], [5]], 4) == 0.0  # the 1-token sequence has no 4-gram and is skipped
    with pytest.raises(ValueError, match="shorter than 3"):
        metrics.distinct_n([[1, 2]], 3)


def test_mean_entropy_from_scores_and_from_a_trace(tiny_gpt2_dir):
    uniform4 = torch.zeros(1, 4)
    one_hot = torch.tensor([[0.0, float("-inf"), float("-inf"), float("-inf")]])
    assert metrics.mean_entropy(torch.cat([uniform4, one_hot])) == pytest.approx(math.log(4) / 2)

    loaded = decoders.load_model(tiny_gpt2_dir)
    results = decoders.generate(["The cat", "A dog"], "top_k", model=loaded, max_new_tokens=5, seed=0, trace=True)
    # top-k 5 leaves 5 tokens: each step's final entropy is between 0 and ln 5, the raw model's is larger
    final = metrics.mean_entropy([r.steps for r in results])
    raw = metrics.mean_entropy([r.steps for r in results], stage=0)
    assert 0 < final <= math.log(5) + 1e-6 < raw
    expected = sum(s.stages[-1].entropy for r in results for s in r.steps) / 10
    assert final == pytest.approx(expected)
    assert metrics.mean_entropy(results[0].steps) == pytest.approx(
        sum(s.stages[-1].entropy for s in results[0].steps) / 5
    )


def test_rep_n_pooled_and_diversity_on_hand_made_texts():
    looping = "the cat sat the cat sat the cat sat".split()  # 9 words: 8 bigrams (3 unique), 7 trigrams (3), 6 4-grams (3)
    fresh = "one two three four five six seven eight nine".split()
    assert metrics.rep_n([looping], 2, pooled=True) == pytest.approx(1 - 3 / 8)
    assert metrics.rep_n([looping], 4, pooled=True) == pytest.approx(1 - 3 / 6)
    # pooled: (3 + 8) unique of (8 + 8) bigrams; averaged: mean(5/8, 0)
    assert metrics.rep_n([looping, fresh], 2, pooled=True) == pytest.approx(1 - 11 / 16)
    assert metrics.rep_n([looping, ["a", "b"]], 2) == pytest.approx((5 / 8 + 0) / 2)
    assert metrics.diversity([fresh]) == 1.0
    assert metrics.diversity([looping]) == pytest.approx((3 / 8) * (3 / 7) * (3 / 6))
    assert metrics.diversity([looping, fresh]) == pytest.approx((11 / 16) * (10 / 14) * (9 / 12))
    with pytest.raises(ValueError, match="shorter than 4"):
        metrics.diversity([["a", "b", "c"]])


def test_coherence_is_the_cosine_of_mean_pooled_embeddings(tiny_gpt2_dir):
    loaded = decoders.load_model(tiny_gpt2_dir)
    tokenizer = loaded.tokenizer
    prompt = tokenizer("The history of the English theatre")["input_ids"]
    same, other = list(prompt), tokenizer(" 1 2 3 4 5 6 7 8 9 !!", add_special_tokens=False)["input_ids"]
    embeddings = metrics.mean_pooled_embeddings(loaded, [prompt, same, other], batch_size=3)
    alone = metrics.mean_pooled_embeddings(loaded, [other], batch_size=1)
    assert embeddings[2].tolist() == pytest.approx(alone[0].tolist(), abs=1e-5)  # padding is left out of the mean
    # by hand: the mean of the last hidden state over the tokens
    with torch.no_grad():
        hidden = loaded.model(torch.tensor([other]), output_hidden_states=True).hidden_states[-1][0]
    assert alone[0].tolist() == pytest.approx(hidden.mean(dim=0).tolist(), abs=1e-5)
    scores = metrics.coherence(embeddings[[0, 0]], embeddings[[1, 2]])
    assert scores[0] == pytest.approx(1.0)  # a continuation that repeats its prompt
    expected = torch.dot(embeddings[0], embeddings[2]) / (embeddings[0].norm() * embeddings[2].norm())
    assert scores[1] == pytest.approx(float(expected), abs=1e-6) and scores[1] < scores[0]
    with pytest.raises(ValueError, match="one of each per text"):
        metrics.coherence(embeddings[:2], embeddings[:1])
    with pytest.raises(ValueError, match="at least one token"):
        metrics.mean_pooled_embeddings(loaded, [[]])


def mean_of(values):
    return metrics.ratio_of_sums(values, np.ones(len(values)))


def test_bootstrap_interval_covers_the_true_mean_at_about_the_nominal_rate():
    # 400 synthetic samples of 30 values (true mean 5, sd 2): the 95 % interval should cover 5 about 95 % of the
    # time (the percentile bootstrap runs a little short at n = 30, about 93-94 %)
    rng = np.random.default_rng(12345)
    covered = 0
    for trial in range(400):
        values = rng.normal(5.0, 2.0, size=30)
        low, high = metrics.bootstrap_interval(mean_of(values), len(values), resamples=1000, seed=trial)
        covered += low <= 5.0 <= high
    assert 0.91 <= covered / 400 <= 0.98


def test_cluster_bootstrap_covers_the_mean_of_prompts_with_several_seeds():
    # y[prompt, seed] = 1 + prompt effect (sd 1) + seed noise (sd 2): resampling prompts with all their seeds
    # covers the true mean 1 at about the nominal rate
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(300):
        y = 1.0 + rng.normal(0, 1, size=(30, 1)) + rng.normal(0, 2, size=(30, 3))
        low, high = metrics.bootstrap_interval(
            metrics.ratio_of_sums(y.sum(axis=1), np.full(30, 3.0)), 30, resamples=1000, seed=trial
        )
        covered += low <= 1.0 <= high
    assert 0.91 <= covered / 300 <= 0.98


def test_bootstrap_interval_is_seeded():
    values = np.random.default_rng(0).exponential(size=40)
    first = metrics.bootstrap_interval(mean_of(values), 40, seed=3)
    assert metrics.bootstrap_interval(mean_of(values.copy()), 40, seed=3) == first  # same data, same interval
    assert metrics.bootstrap_interval(mean_of(values), 40, seed=4) != first
    low, high = first
    assert low < values.mean() < high
    weights = metrics.bootstrap_weights(5, resamples=200, seed=1)
    assert weights.shape == (200, 5) and (weights.sum(axis=1) == 5).all()
    with pytest.raises(ValueError, match="level"):
        metrics.bootstrap_interval(mean_of(values), 40, level=95)


def test_jackknife_interval_of_a_mean_is_the_normal_interval():
    values = np.random.default_rng(1).normal(3.0, 1.5, size=25)
    low, high = metrics.jackknife_interval(mean_of(values), len(values))
    half = 1.959964 * values.std(ddof=1) / math.sqrt(len(values))  # the jackknife se of a mean is s / √n
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half))
    with pytest.raises(ValueError, match="two clusters"):
        metrics.jackknife_interval(mean_of(values[:1]), 1)


# ---- MAUVE (Pillutla et al. 2021), checked against the mauve-text package (the `research` extra) -------------


def reference_mauve():
    """The mauve-text package (the `research` extra, which the test extra includes): a failure, not a skip, when
    it is missing."""
    try:
        import mauve
    except ImportError as exc:
        pytest.fail(f"the MAUVE tests compare with mauve-text ({exc}): pip install 'decoders-lab[research]'")
    return mauve


def reference_mauve_of_histograms(p, q, points=25, scaling=5.0):
    """mauve-text's own divergence curve and area (its compute_mauve, from the histograms on)."""
    reference_mauve()
    from mauve.compute_mauve import get_divergence_curve_for_multinomials
    from sklearn.metrics import auc

    x, y = get_divergence_curve_for_multinomials(p, q, np.linspace(1e-6, 1 - 1e-6, points), scaling).T
    first, second = np.argsort(x), np.argsort(y)
    return 0.5 * (auc(x[first], y[first]) + auc(y[second], x[second]))


def test_mauve_of_histograms_is_mauve_texts():
    rng = np.random.default_rng(0)
    cases = [(rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k))) for k in (2, 5, 20, 50)]
    counts = rng.integers(0, 6, size=(2, 30)).astype(float)  # buckets empty on one side or both
    counts[:, 0] += 1
    cases += [(counts[0] / counts[0].sum(), counts[1] / counts[1].sum()), (np.array([0.9, 0.1]), np.array([0.1, 0.9]))]
    for p, q in cases:
        for points, scaling in ((25, 5.0), (7, 1.0)):
            expected = reference_mauve_of_histograms(p, q, points, scaling)
            got = metrics.mauve_from_histograms(
                p * 7, q * 3, divergence_curve_discretization_size=points, mauve_scaling_factor=scaling
            )  # counts: normalised inside
            assert float(got) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # vectorised over resamples: a [B, K] batch gives each row's value
    batch_p, batch_q = rng.dirichlet(np.ones(6), size=4), rng.dirichlet(np.ones(6), size=4)
    together = metrics.mauve_from_histograms(batch_p, batch_q)
    assert together.shape == (4,)
    alone = [float(metrics.mauve_from_histograms(a, b)) for a, b in zip(batch_p, batch_q)]
    assert together.tolist() == pytest.approx(alone)
    # equal histograms give 1 (mauve-text's unstable sort of tied points gives 0.75 for two 2-bucket ones)
    assert float(metrics.mauve_from_histograms([1, 1], [1, 1])) == pytest.approx(1.0, abs=1e-12)
    assert float(metrics.mauve_from_histograms([2, 3, 5], [2, 3, 5])) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="different shapes"):
        metrics.mauve_from_histograms([1, 2], [1, 2, 3])


def blobs(counts, centres, rng, spread=0.01):
    return np.vstack([c + spread * rng.normal(size=(n, centres.shape[1])) for c, n in zip(centres, counts)])


def test_mauve_equals_mauve_texts_when_the_buckets_are_unambiguous():
    reference = reference_mauve()

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 16)) * 10
    p, q = blobs([40, 30, 20, 10], centres, rng), blobs([10, 20, 30, 40], centres, rng)
    expected = reference.compute_mauve(p_features=p, q_features=q, num_buckets=4).mauve
    assert metrics.mauve(p, q, num_buckets=4) == pytest.approx(expected, abs=1e-9)
    blob_histograms = metrics.mauve_from_histograms([40, 30, 20, 10], [10, 20, 30, 40])
    assert metrics.mauve(p, q, num_buckets=4) == pytest.approx(float(blob_histograms))
    p_labels, q_labels, buckets = metrics.mauve_quantize(p, q, num_buckets=4)
    assert buckets == 4 and sorted(np.bincount(p_labels).tolist()) == [10, 20, 30, 40]
    assert len(set(p_labels[:40].tolist())) == 1 and p_labels[0] == q_labels[0]  # blob 0 is one bucket on both sides


def test_mauve_of_gaussian_clouds_agrees_with_mauve_text():
    """Two clouds of 300 points in 16 dimensions, the second shifted along one axis: both implementations, each
    averaged over 8 k-means seeds (their spread over seeds is about 0.03 here), agree within 0.05, fall as the
    shift grows, give about 1 for the same distribution and about 0 for far-apart clouds."""
    reference = reference_mauve()

    rng = np.random.default_rng(0)
    human = rng.normal(size=(300, 16))
    ours, theirs = [], []
    for shift in (0.0, 1.0, 2.0, 4.0):
        model = rng.normal(size=(300, 16))
        model[:, 0] += shift
        ours.append(np.mean([metrics.mauve(human, model, seed=seed) for seed in range(8)]))
        theirs.append(
            np.mean([reference.compute_mauve(p_features=human, q_features=model, seed=seed).mauve for seed in range(8)])
        )
    assert ours == pytest.approx(theirs, abs=0.05)
    assert ours[0] > 0.9 and ours[-1] < 0.05
    assert ours == sorted(ours, reverse=True)
    assert metrics.mauve(human, human) == pytest.approx(1.0, abs=1e-12)  # the same texts: the same histogram


def test_mauve_pca_is_mauve_texts_normalised_pca():
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    rng = np.random.default_rng(2)
    features = rng.normal(size=(150, 12)) * np.linspace(3, 0.2, 12) + 1.0  # unequal variances, off the origin
    for share in (0.5, 0.9, 0.99):
        pca = PCA(n_components=None, whiten=False, random_state=26).fit(normalize(features, norm="l2"))
        kept = int(np.argmax(np.cumsum(pca.explained_variance_ratio_) >= share)) + 1  # mauve-text's rule
        expected = pca.transform(normalize(features, norm="l2"))[:, :kept]
        got = metrics.mauve_pca(features, share)
        assert got.shape == expected.shape and 1 < kept < 12
        assert np.abs(got) == pytest.approx(np.abs(expected), abs=1e-9)  # up to each component's sign


def test_mauve_defaults_and_determinism():
    rng = np.random.default_rng(1)
    human, model = rng.normal(size=(120, 8)), rng.normal(size=(240, 8)) + 0.5
    # mauve-text's defaults: 'auto' = max(2, round(min(|P|, |Q|) / 10)) buckets
    _, _, buckets = metrics.mauve_quantize(human, model)
    assert buckets == 12 and metrics.mauve_buckets(8, 24) == 2 and metrics.mauve_buckets(500, 600) == 50
    first = metrics.mauve(human, model)
    assert metrics.mauve(human.copy(), model.copy()) == first  # seeded: the same features, the same value
    # the defaults are mauve-text's, spelt out
    reference = reference_mauve()
    theirs = inspect.signature(reference.compute_mauve).parameters
    ours = inspect.signature(metrics.mauve).parameters
    for name in ("num_buckets", "kmeans_explained_var", "kmeans_num_redo", "kmeans_max_iter",
                 "divergence_curve_discretization_size", "mauve_scaling_factor", "seed"):  # fmt: skip
        assert ours[name].default == theirs[name].default, name
    assert first == metrics.mauve(
        human, model, num_buckets=12, kmeans_explained_var=0.9, kmeans_num_redo=5, kmeans_max_iter=500,
        divergence_curve_discretization_size=25, mauve_scaling_factor=5, seed=25,
    )  # fmt: skip
    assert metrics.mauve(human, model, seed=metrics.MAUVE_SEED) == first
    assert 0 < first < 1
    # the scaling constant sharpens the curve: a larger c, a smaller MAUVE for the same histograms
    sharper, flatter = (metrics.mauve(human, model, mauve_scaling_factor=c) for c in (10, 1))
    assert sharper < first < flatter
    with pytest.raises(ValueError, match="same width"):
        metrics.mauve(human, model[:, :4])
    with pytest.raises(ValueError, match="at least one text per bucket"):
        metrics.mauve(human[:3], model[:3], num_buckets=10)
    with pytest.raises(ValueError, match="num_buckets"):
        metrics.mauve(human, model, num_buckets="many")
    with pytest.raises(ValueError, match="kmeans_explained_var"):
        metrics.mauve(human, model, kmeans_explained_var=1.0)


def test_continuation_features_run_each_prompt_once_and_match_the_whole_texts(tiny_model_dir, monkeypatch):
    loaded = decoders.load_model(tiny_model_dir)
    prompts = [[5, 6, 7], [9, 10], [5, 6, 7], [5, 6, 7], [11]]
    continuations = [[12, 13, 14, 15], [], [16], [17, 18], [19, 20, 21]]
    expected = {pooling: metrics.text_features(loaded, [p + c for p, c in zip(prompts, continuations)], pooling=pooling)
                for pooling in ("last", "mean")}  # fmt: skip
    base = loaded.model.base_model
    forward = base.forward
    calls = []

    @functools.wraps(forward)
    def counted(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    monkeypatch.setattr(base, "forward", counted)
    for pooling in ("last", "mean"):
        calls.clear()
        got = metrics.continuation_features(loaded, prompts, continuations, pooling=pooling, batch_size=2)
        assert got.tolist() == [pytest.approx(row, abs=1e-5) for row in expected[pooling].tolist()]
        # each distinct prompt once, then its non-empty continuations, at most 2 a pass (padded to the longest)
        assert calls == [(1, 3), (2, 4), (1, 2), (1, 2), (1, 1), (1, 3)]
    with pytest.raises(ValueError, match="one of each"):
        metrics.continuation_features(loaded, prompts, continuations[:2])


def test_text_features_last_token_and_mean(tiny_gpt2_dir):
    loaded = decoders.load_model(tiny_gpt2_dir)
    texts = [[5, 6, 7, 8, 9], [10, 11], [12]]
    last = metrics.text_features(loaded, texts, pooling="last", batch_size=3)
    mean = metrics.text_features(loaded, texts, pooling="mean", batch_size=3)
    for row, tokens in enumerate(texts):
        with torch.no_grad():
            hidden = loaded.model(torch.tensor([tokens]), output_hidden_states=True).hidden_states[-1][0]
        assert last[row].tolist() == pytest.approx(hidden[-1].tolist(), abs=1e-5)  # the last token, padding aside
        assert mean[row].tolist() == pytest.approx(hidden.mean(dim=0).tolist(), abs=1e-5)
    assert metrics.mean_pooled_embeddings(loaded, texts).tolist() == mean.tolist()
    with pytest.raises(ValueError, match="pooling"):
        metrics.text_features(loaded, texts, pooling="max")
