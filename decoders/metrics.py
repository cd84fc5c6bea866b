"""Quality metrics of generated text, as in the decoding-strategy literature.

Each function takes plain data (token ids, texts, trace records), so it works on generations and on human
text alike; only :func:`continuation_nlls` and :func:`perplexity` run a model.

    perplexity          exp(mean NLL of the continuation given the prompt)      Holtzman et al. 2020, Table 1
    self_bleu           mean BLEU-4 of each text against all the others          Zhu et al. 2018 (Texygen)
    zipf_coefficient    −slope of log frequency vs log rank                      Holtzman et al. 2020, Table 1
    repetition_pct      % of generations that end in a repeating loop           Holtzman et al. 2020, Table 1
    distinct_n          unique n-grams / n-grams, pooled                        Li et al. 2016
    rep_n               1 − unique n-grams / n-grams, per sequence, averaged    Welleck et al. 2020
                        (pooled=True: Σ unique / Σ n-grams over sequences)      Su et al. 2022
    diversity           Π_{n=2..4} (1 − rep-n), pooled rep-n                    Su et al. 2022
    coherence           cos(embedding of prompt, embedding of continuation)     Su et al. 2022
    mean_entropy        mean entropy of the distribution each token came from   (nats)

and the intervals around them: :func:`bootstrap_interval` (percentile bootstrap over clusters, such as
prompts, seeded so that the same data give the same interval), :func:`jackknife_interval` (for statistics that
a resample with repeated texts biases) and :func:`ratio_of_sums` for the metrics above that are sums over texts. Self-BLEU uses nltk's BLEU, imported when called: ``pip install 'decoders-lab[metrics]'``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from decoders.errors import DecodersError
from decoders.trace import StepRecord

Tokens = Sequence[Hashable]
_WORD = re.compile(r"\w+|[^\w\s]")


def _missing_extra(feature: str, package: str, extra: str, error: ImportError) -> DecodersError:
    """The error for an optional package that is not installed: what needs it, and the extra that brings it."""
    return DecodersError(
        f"{feature} needs {package}, which could not be imported ({error}): pip install 'decoders-lab[{extra}]'"
    )


def _torch_model(scorer: Any) -> Any:
    """The torch module of a LoadedModel, a ``(model, tokenizer)`` pair, or a bare model."""
    if isinstance(scorer, tuple):
        return scorer[0]
    return getattr(scorer, "model", scorer)


@torch.inference_mode()
def continuation_nlls(
    scorer: Any, prompt_ids: Sequence[Sequence[int]], continuation_ids: Sequence[Sequence[int]], *, batch_size: int = 8
) -> list[list[float]]:
    """Per-token negative log-likelihood (nats) of each continuation given its prompt.

    ``nll_t = −log p(c_t | prompt, c_<t)`` for every continuation token ``c_t``, from one forward pass over
    ``prompt + continuation`` (right-padded batches of ``batch_size``).

    Args:
        scorer: a LoadedModel, a ``(model, tokenizer)`` pair or a causal LM (called with ``input_ids`` and
            ``attention_mask``).
        prompt_ids: one non-empty list of token ids per text.
        continuation_ids: the token ids that follow each prompt (may be empty).
        batch_size: rows per forward pass.

    Example:
        >>> nlls = continuation_nlls(loaded, [[1, 2]], [[3, 4, 5]])  # doctest: +SKIP
        >>> len(nlls[0])  # doctest: +SKIP
        3
    """
    if len(prompt_ids) != len(continuation_ids):
        raise ValueError(
            f"{len(prompt_ids)} prompts but {len(continuation_ids)} continuations: pass one of each per text"
        )
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token: the first continuation token is scored given it")
    model = _torch_model(scorer)
    device = next(model.parameters()).device
    results: list[list[float]] = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = [
            list(p) + list(c)
            for p, c in zip(prompt_ids[start : start + batch_size], continuation_ids[start : start + batch_size])
        ]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, tokens in enumerate(rows):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        for row, prompt in enumerate(prompt_ids[start : start + batch_size]):
            first, end = len(prompt), len(rows[row])
            predicting = logits[row, first - 1 : end - 1]
            targets = ids[row, first:end].to(device)
            nll = torch.logsumexp(predicting, dim=-1) - predicting.gather(1, targets.unsqueeze(-1)).squeeze(-1)
            results.append(nll.tolist())
    return results


def perplexity(
    scorer: Any, prompt_ids: Sequence[Sequence[int]], continuation_ids: Sequence[Sequence[int]], *, batch_size: int = 8
) -> float:
    """Perplexity of continuations under a scoring model: ``exp(Σ nll_t / N)`` over all N continuation tokens.

    The mean is over tokens (pooled), not over texts, as for the "Perplexity" column of Holtzman et al.
    2020, "The Curious Case of Neural Text Degeneration" (ICLR), Table 1. See :func:`continuation_nlls`.

    Args:
        scorer: a LoadedModel, a ``(model, tokenizer)`` pair or a causal LM.
        prompt_ids: one non-empty list of token ids per text.
        continuation_ids: the token ids that follow each prompt.
        batch_size: rows per forward pass.

    Example:
        >>> perplexity(loaded, [result.prompt_ids], [result.generated_ids])  # doctest: +SKIP
        3.92
    """
    nlls = [
        nll for row in continuation_nlls(scorer, prompt_ids, continuation_ids, batch_size=batch_size) for nll in row
    ]
    if not nlls:
        raise ValueError("the continuations hold no tokens: there is nothing to score")
    return math.exp(sum(nlls) / len(nlls))


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, the tokens :func:`self_bleu` compares.

    Example:
        >>> words("The cat's hat.")
        ['the', 'cat', "'", 's', 'hat', '.']
    """
    return _WORD.findall(text.lower())


def self_bleu(texts: Sequence[str], *, max_n: int = 4) -> float:
    """Self-BLEU: the mean, over texts, of the BLEU of each text against all the other texts as references.

    ``Self-BLEU = (1/K) Σ_i BLEU(text_i; {text_j : j ≠ i})`` with BLEU-``max_n`` (uniform weights over 1..n-gram
    precisions, brevity penalty, nltk's smoothing method 1), on :func:`words`. From Zhu et al. 2018, "Texygen:
    A Benchmarking Platform for Text Generation Models" (SIGIR); used by Holtzman et al. 2020, Table 1. Higher
    means less diverse (1.0: all texts identical). Needs ``nltk`` (the ``metrics`` extra).

    Args:
        texts: at least two texts.
        max_n: the longest n-gram (4 for Self-BLEU-4).

    Example:
        >>> round(self_bleu(["the cat sat on the mat", "the cat sat on the mat"]), 3)
        1.0
    """
    return float(np.mean(self_bleu_scores(texts, max_n=max_n)))


def self_bleu_scores(texts: Sequence[str], *, max_n: int = 4) -> list[float]:
    """Each text's BLEU against all the other texts: the terms :func:`self_bleu` averages.

    Args:
        texts: at least two texts.
        max_n: the longest n-gram.

    Example:
        >>> [round(s, 3) for s in self_bleu_scores(["a b c d", "a b c d", "w x y z"])]
        [1.0, 1.0, 0.0]
    """
    try:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    except ImportError as exc:
        raise _missing_extra("Self-BLEU", "nltk", "metrics", exc) from exc

    if len(texts) < 2:
        raise ValueError(f"Self-BLEU needs at least two texts, got {len(texts)}")
    tokenized = [words(text) for text in texts]
    weights = (1.0 / max_n,) * max_n
    smoothing = SmoothingFunction().method1
    return [
        float(sentence_bleu(tokenized[:i] + tokenized[i + 1 :], hypothesis, weights, smoothing_function=smoothing))
        for i, hypothesis in enumerate(tokenized)
    ]


def rank_frequencies(sequences: Sequence[Tokens]) -> list[int]:
    """How often each distinct token occurs over all sequences, most frequent first (rank 1 first).

    Example:
        >>> rank_frequencies([[1, 1, 2], [1, 3]])
        [3, 1, 1]
    """
    return sorted(Counter(token for sequence in sequences for token in sequence).values(), reverse=True)


def zipf_coefficient(sequences: Sequence[Tokens]) -> float:
    """Zipf coefficient ``s`` of the tokens: frequency ∝ rank^−s, fitted over every rank.

    ``s = −slope`` of the least-squares line through ``(log rank, log frequency)`` for all distinct tokens
    (rank 1 = most frequent), over the tokens of all sequences pooled. From Holtzman et al. 2020, "The Curious
    Case of Neural Text Degeneration", Table 1 (human text 0.93 there); a larger ``s`` means a smaller, more
    repetitive vocabulary.

    Args:
        sequences: token sequences (model token ids, or words); at least two distinct tokens in all.

    Example:
        >>> tokens = [t for rank in range(1, 5) for t in [rank] * (12 // rank)]  # frequencies 12, 6, 4, 3
        >>> round(zipf_coefficient([tokens]), 6)
        1.0
    """
    frequencies = rank_frequencies(sequences)
    if len(frequencies) < 2:
        raise ValueError("the Zipf coefficient needs at least two distinct tokens")
    ranks = np.arange(1, len(frequencies) + 1)
    slope, _ = np.polyfit(np.log(ranks), np.log(frequencies), 1)
    return float(-slope)


def ends_in_loop(tokens: Tokens, *, min_repeats: int = 3) -> bool:
    """Whether ``tokens`` end with a phrase of one or more tokens repeated ``min_repeats`` times in a row.

    True when, for some length ``L ≥ 1``, the last ``min_repeats·L`` tokens are the same ``L`` tokens written
    ``min_repeats`` times (``... x y z x y z x y z`` with ``L = 3``).

    Example:
        >>> ends_in_loop([5, 1, 2, 1, 2, 1, 2]), ends_in_loop([1, 2, 1, 2, 3])
        (True, False)
    """
    tokens = list(tokens)
    for length in range(1, len(tokens) // min_repeats + 1):
        if tokens[-length * min_repeats :] == tokens[-length:] * min_repeats:
            return True
    return False


def repetition_pct(sequences: Sequence[Tokens], *, min_repeats: int = 3) -> float:
    """Percentage of sequences that end in a repeating loop (:func:`ends_in_loop`).

    ``100 · |{x : x ends with a phrase of ≥ 1 token repeated ≥ min_repeats times}| / |sequences|``: the
    "Repetition %" column of Holtzman et al. 2020, Table 1, with this criterion made exact (any phrase length,
    three consecutive copies at the very end of the generation).

    Args:
        sequences: token sequences, one per generation.
        min_repeats: how many consecutive copies make a loop.

    Example:
        >>> repetition_pct([[1, 2, 2, 2], [1, 2, 3, 4]])
        50.0
    """
    if not sequences:
        raise ValueError("no sequences given")
    return 100.0 * sum(ends_in_loop(s, min_repeats=min_repeats) for s in sequences) / len(sequences)


def ngrams(tokens: Tokens, n: int) -> list[tuple]:
    """The n-grams of a sequence, in order (repeats included).

    Example:
        >>> ngrams([1, 2, 3], 2)
        [(1, 2), (2, 3)]
    """
    tokens = list(tokens)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sequences: Sequence[Tokens], n: int) -> float:
    """Distinct-n: distinct n-grams over all n-grams, pooled over the sequences (Li et al. 2016).

    ``distinct-n = |∪ ngrams(x)| / Σ |ngrams(x)|``, from Li et al. 2016, "A Diversity-Promoting Objective
    Function for Neural Conversation Models" (NAACL). 1.0: no n-gram occurs twice anywhere.

    Args:
        sequences: token sequences.
        n: the n-gram length.

    Example:
        >>> distinct_n([[1, 2, 1, 2], [1, 2]], 2)
        0.5
    """
    grams = [gram for sequence in sequences for gram in ngrams(sequence, n)]
    if not grams:
        raise ValueError(f"the sequences hold no {n}-grams: they are all shorter than {n} tokens")
    return len(set(grams)) / len(grams)


def rep_n(sequences: Sequence[Tokens], n: int, *, pooled: bool = False) -> float:
    """rep-n: the share of n-grams that repeat an earlier n-gram of the same sequence.

    ``rep-n = mean_x (1 − |unique ngrams(x)| / |ngrams(x)|)`` over the sequences with at least one n-gram
    (seq-rep-n of Welleck et al. 2020, "Neural Text Generation with Unlikelihood Training", ICLR), or with
    ``pooled=True`` ``rep-n = 1 − Σ_x |unique ngrams(x)| / Σ_x |ngrams(x)|`` as in Su et al. 2022, "A
    Contrastive Framework for Neural Text Generation" (NeurIPS), §5.1 (their code pools the counts over texts;
    the two agree when every sequence has the same length). 0: no repeats within a sequence. Unique n-grams are
    counted per sequence: the same n-gram in two sequences is no repeat.

    Args:
        sequences: token sequences.
        n: the n-gram length (Welleck et al. report n = 4, Su et al. n = 2, 3, 4).
        pooled: pool the counts over sequences (Su et al.) instead of averaging each sequence's ratio.

    Example:
        >>> rep_n([[1, 1, 1, 1], [1, 2, 3, 4]], 1)  # 1 − 1/4 and 0
        0.375
        >>> rep_n([[1, 1, 1, 1], [1, 2]], 1, pooled=True)  # 1 − (1 + 2) / (4 + 2)
        0.5
    """
    counts = [(len(set(grams)), len(grams)) for grams in (ngrams(s, n) for s in sequences) if grams]
    if not counts:
        raise ValueError(f"the sequences hold no {n}-grams: they are all shorter than {n} tokens")
    if pooled:
        return 1 - sum(u for u, _ in counts) / sum(t for _, t in counts)
    return float(np.mean([1 - u / t for u, t in counts]))


def diversity(sequences: Sequence[Tokens], ns: Sequence[int] = (2, 3, 4)) -> float:
    """Diversity of Su et al. 2022: ``Π_{n ∈ ns} (1 − rep-n)``, with the pooled rep-n of :func:`rep_n`.

    From Su et al. 2022, "A Contrastive Framework for Neural Text Generation" (NeurIPS), §5.1 (n = 2, 3, 4;
    their human text scores 0.95 on WikiText-103, greedy 0.22). 1: no n-gram repeats within any sequence; it
    falls towards 0 as sequences loop.

    Args:
        sequences: token sequences (Su et al. use words; any hashable tokens work).
        ns: the n-gram lengths.

    Example:
        >>> diversity([[1, 2, 3, 4, 5]]), round(diversity([[1, 2, 1, 2, 1, 2]]), 4)  # (1 − 3/5)(1 − 2/4)(1 − 1/3)
        (1.0, 0.1333)
    """
    return float(np.prod([1 - rep_n(sequences, n, pooled=True) for n in ns]))


@torch.inference_mode()
def mean_pooled_embeddings(scorer: Any, token_ids: Sequence[Sequence[int]], *, batch_size: int = 16) -> torch.Tensor:
    """One vector per text: the model's last hidden state, averaged over the text's tokens.

    The text is encoded on its own (no other context), right-padded in batches of ``batch_size``; padding is
    left out of the mean. With a transformers causal LM, the last hidden state is the output of its base model
    (after the final norm, before the LM head).

    Args:
        scorer: a LoadedModel, a ``(model, tokenizer)`` pair, or a causal LM that takes
            ``output_hidden_states=True``.
        token_ids: one non-empty list of token ids per text.
        batch_size: texts per forward pass.

    Returns:
        a float tensor ``[len(token_ids), hidden size]``.

    Example:
        >>> mean_pooled_embeddings(loaded, [[1, 2, 3], [4]]).shape  # doctest: +SKIP
        torch.Size([2, 576])
    """
    if any(len(ids) == 0 for ids in token_ids):
        raise ValueError("every text needs at least one token to be embedded")
    model = _torch_model(scorer)
    base = getattr(model, "base_model", None)
    device = next(model.parameters()).device
    vectors = []
    for start in range(0, len(token_ids), batch_size):
        rows = token_ids[start : start + batch_size]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, tokens in enumerate(rows):
            ids[row, : len(tokens)] = torch.tensor(list(tokens))
            mask[row, : len(tokens)] = 1
        ids, mask = ids.to(device), mask.to(device)
        if base is not None and base is not model:
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        vectors.append(((hidden * weights).sum(dim=1) / weights.sum(dim=1)).float().cpu())
    return torch.cat(vectors)


def coherence(prompt_embeddings: torch.Tensor, continuation_embeddings: torch.Tensor) -> list[float]:
    """Coherence of Su et al. 2022: the cosine similarity of each prompt's and its continuation's embedding.

    ``coherence(x, x̂) = v_x · v_x̂ / (‖v_x‖ ‖v_x̂‖)`` per text, averaged over texts in the paper (Su et al.
    2022, "A Contrastive Framework for Neural Text Generation", NeurIPS, §5.1), where ``v`` is a SimCSE sentence
    embedding. SimCSE cannot be downloaded here: the quality sweep passes :func:`mean_pooled_embeddings` of its
    scoring model instead, a stand-in whose values are not comparable with the paper's (a causal LM's mean-pooled
    states are similar for any two texts, so differences between strategies are small but still ordered).

    Args:
        prompt_embeddings: ``[N, H]``.
        continuation_embeddings: ``[N, H]``, row ``i`` the continuation of prompt ``i``.

    Example:
        >>> coherence(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
        [1.0, 0.7071067690849304]
    """
    if prompt_embeddings.shape != continuation_embeddings.shape:
        raise ValueError(
            f"{tuple(prompt_embeddings.shape)} prompt embeddings but {tuple(continuation_embeddings.shape)} "
            "continuation embeddings: pass one of each per text"
        )
    return torch.nn.functional.cosine_similarity(prompt_embeddings.float(), continuation_embeddings.float(), dim=-1).tolist()


def bootstrap_weights(clusters: int, *, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """How often each cluster is drawn in each bootstrap resample: ``[resamples, clusters]`` counts.

    Every resample draws ``clusters`` clusters with replacement (Efron 1979); a statistic of a resample is a
    function of these counts (weighted sums), so every metric of a sweep can use the same resamples, and two
    strategies compared on the same prompts use the same draws (a paired bootstrap). The same ``seed`` gives
    the same counts.

    Example:
        >>> weights = bootstrap_weights(3, resamples=2, seed=0)
        >>> weights.shape, weights.sum(axis=1).tolist()
        ((2, 3), [3.0, 3.0])
    """
    if clusters < 1:
        raise ValueError(f"the bootstrap needs at least one cluster, got {clusters}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, clusters, size=(resamples, clusters))
    weights = np.zeros((resamples, clusters))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1)
    return weights


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray], clusters: int, *, level: float = 0.95, resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """A percentile bootstrap interval, resampling whole clusters (e.g. prompts, with all their seeds).

    ``[q_{(1−level)/2}, q_{(1+level)/2}]`` of the statistic over ``resamples`` resamples of the clusters drawn
    with replacement (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13). Resampling prompts
    with every seed of a drawn prompt (a cluster bootstrap) accounts for the variance between prompts and
    between seeds at once. Seeded: the same statistic, data and seed give the same interval.

    Args:
        statistic: maps cluster weights ``[B, clusters]`` (see :func:`bootstrap_weights`) to the statistic of
            each resample ``[B]``; with all weights 1 it gives the value measured on the data.
        clusters: how many clusters the data have.
        level: the coverage, 0.95 for a 95 % interval.
        resamples: how many resamples.
        seed: the seed of the resampling.

    Example:
        >>> values = np.array([1.0, 2.0, 3.0, 4.0])
        >>> low, high = bootstrap_interval(lambda w: w @ values / w.sum(axis=1), len(values))
        >>> bool(1.0 < low < 2.5 < high < 4.0)
        True
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (0.95 for a 95 % interval), got {level}")
    values = np.asarray(statistic(bootstrap_weights(clusters, resamples=resamples, seed=seed)), dtype=float)
    low, high = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def jackknife_interval(
    statistic: Callable[[np.ndarray], np.ndarray], clusters: int, *, level: float = 0.95
) -> tuple[float, float]:
    """A normal interval with the delete-one-cluster jackknife's standard error (Efron & Tibshirani 1993, ch. 11).

    ``θ̂ ± z_{(1+level)/2} · se``, ``se² = (C−1)/C · Σ_i (θ̂_(i) − θ̄)²`` over the ``C`` estimates ``θ̂_(i)`` that leave
    cluster ``i`` out. For statistics the bootstrap biases because a resample repeats whole texts, such as a Zipf
    coefficient fitted to token counts (a repeated text doubles its rare tokens' counts); leaving one cluster out
    repeats nothing. Deterministic.

    Args:
        statistic: maps cluster weights ``[B, clusters]`` to ``[B]``, as for :func:`bootstrap_interval`.
        clusters: how many clusters the data have (at least 2).
        level: the coverage.

    Example:
        >>> values = np.array([1.0, 2.0, 3.0, 4.0])  # the jackknife se of a mean is s / √n = 0.645
        >>> [round(v, 3) for v in jackknife_interval(lambda w: w @ values / w.sum(axis=1), 4)]
        [1.235, 3.765]
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (0.95 for a 95 % interval), got {level}")
    if clusters < 2:
        raise ValueError(f"the jackknife needs at least two clusters, got {clusters}")
    estimate = float(statistic(np.ones((1, clusters)))[0])
    left_out = np.asarray(statistic(np.ones((clusters, clusters)) - np.eye(clusters)), dtype=float)
    spread = math.sqrt((clusters - 1) / clusters * float(np.sum((left_out - left_out.mean()) ** 2)))
    z = NormalDist().inv_cdf((1 + level) / 2)
    return estimate - z * spread, estimate + z * spread


def ratio_of_sums(numerators: Sequence[float], denominators: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    """The statistic ``Σ w_c · num_c / Σ w_c · den_c`` of cluster weights, for :func:`bootstrap_interval`.

    A mean over texts is a ratio of sums with a denominator of 1 per text; perplexity's log (NLL over tokens),
    pooled rep-n and distinct-n are ratios of sums too, with per-cluster totals.

    Example:
        >>> ratio_of_sums([1.0, 3.0], [1.0, 1.0])(np.ones((1, 2))).tolist()
        [2.0]
    """
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    return lambda weights: (weights @ num) / (weights @ den)


def mean_entropy(
    source: Sequence[StepRecord] | Sequence[Sequence[StepRecord]] | torch.Tensor, *, stage: int = -1
) -> float:
    """Mean per-step entropy, in nats, of the distribution each token was drawn from.

    ``H̄ = (1/T) Σ_t H(π_t)``, ``H(π) = −Σ_v π(v) log π(v)``, where ``π_t`` is softmax of step ``t``'s scores
    after the chain's processors (``stage=-1``, the selector's input; with greedy, which has no processors,
    that is the model's own distribution) or after any other stage of a trace (``stage=0``: the raw model).

    Args:
        source: trace records (``generate(..., trace=True)``: one result's ``steps``, or a list of them), or
            processed scores ``[T, V]`` (``-inf`` for removed tokens).
        stage: which stage of each record (ignored for scores).

    Example:
        >>> round(mean_entropy(torch.tensor([[0.0, 0.0], [0.0, float("-inf")]])), 4)  # (ln 2 + 0) / 2
        0.3466
    """
    if isinstance(source, torch.Tensor):
        log_probs = torch.log_softmax(source.float(), dim=-1)
        values = torch.special.entr(log_probs.exp()).sum(dim=-1).tolist()
    else:
        records = [r for item in source for r in (item if isinstance(item, (list, tuple)) else [item])]
        values = [record.stages[stage].entropy for record in records]
    if not values:
        raise ValueError("no steps given")
    return float(np.mean(values))
