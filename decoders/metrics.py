"""Quality metrics of generated text, as in the decoding-strategy literature.

Each function takes plain data (token ids, texts, trace records), so it works on generations and on human
text alike; only :func:`continuation_nlls` and :func:`perplexity` run a model.

    perplexity          exp(mean NLL of the continuation given the prompt)      Holtzman et al. 2020, Table 1
    self_bleu           mean BLEU-4 of each text against all the others          Zhu et al. 2018 (Texygen)
    zipf_coefficient    −slope of log frequency vs log rank                      Holtzman et al. 2020, Table 1
    repetition_pct      % of generations that end in a repeating loop           Holtzman et al. 2020, Table 1
    distinct_n          unique n-grams / n-grams, pooled                        Li et al. 2016
    rep_n               1 − unique n-grams / n-grams, per sequence, averaged    Welleck et al. 2020
    mean_entropy        mean entropy of the distribution each token came from   (nats)

Self-BLEU uses nltk's BLEU, imported when called: ``pip install 'decoders-lab[metrics]'``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Sequence
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
    try:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    except ImportError as exc:
        raise _missing_extra("Self-BLEU", "nltk", "metrics", exc) from exc

    if len(texts) < 2:
        raise ValueError(f"Self-BLEU needs at least two texts, got {len(texts)}")
    tokenized = [words(text) for text in texts]
    weights = (1.0 / max_n,) * max_n
    smoothing = SmoothingFunction().method1
    scores = [
        sentence_bleu(tokenized[:i] + tokenized[i + 1 :], hypothesis, weights, smoothing_function=smoothing)
        for i, hypothesis in enumerate(tokenized)
    ]
    return float(np.mean(scores))


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


def _ngrams(tokens: Tokens, n: int) -> list[tuple]:
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
    grams = [gram for sequence in sequences for gram in _ngrams(sequence, n)]
    if not grams:
        raise ValueError(f"the sequences hold no {n}-grams: they are all shorter than {n} tokens")
    return len(set(grams)) / len(grams)


def rep_n(sequences: Sequence[Tokens], n: int) -> float:
    """seq-rep-n: the share of each sequence's n-grams that repeat an earlier one, averaged over sequences.

    ``rep-n = mean_x (1 − |unique ngrams(x)| / |ngrams(x)|)`` over the sequences with at least one n-gram, from
    Welleck et al. 2020, "Neural Text Generation with Unlikelihood Training" (ICLR). 0: no repeats within a
    sequence.

    Args:
        sequences: token sequences.
        n: the n-gram length (Welleck et al. report n = 4).

    Example:
        >>> rep_n([[1, 1, 1, 1], [1, 2, 3, 4]], 1)  # 1 − 1/4 and 0
        0.375
    """
    values = [1 - len(set(grams)) / len(grams) for grams in (_ngrams(s, n) for s in sequences) if grams]
    if not values:
        raise ValueError(f"the sequences hold no {n}-grams: they are all shorter than {n} tokens")
    return float(np.mean(values))


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
