"""Quality metrics of generated text, as in the decoding-strategy literature.

Each function takes plain data (token ids, texts, trace records, feature vectors), so it works on generations
and on human text alike; only :func:`continuation_nlls`, :func:`perplexity` and the embeddings
(:func:`text_features`, :func:`mean_pooled_embeddings`) run a model.

    perplexity          exp(mean NLL of the continuation given the prompt)      Holtzman et al. 2020, Table 1
    self_bleu           mean BLEU-4 of each text against all the others          Zhu et al. 2018 (Texygen)
    zipf_coefficient    −slope of log frequency vs log rank                      Holtzman et al. 2020, Table 1
    repetition_pct      % of generations that end in a repeating loop           Holtzman et al. 2020, Table 1
    distinct_n          unique n-grams / n-grams, pooled                        Li et al. 2016
    rep_n               1 − unique n-grams / n-grams, per sequence, averaged    Welleck et al. 2020
                        (pooled=True: Σ unique / Σ n-grams over sequences)      Su et al. 2022
    diversity           Π_{n=2..4} (1 − rep-n), pooled rep-n                    Su et al. 2022
    coherence           cos(embedding of prompt, embedding of continuation)     Su et al. 2022
    mauve               area under the divergence curve of human vs model       Pillutla et al. 2021
                        texts, quantised by k-means over their features
    mean_entropy        mean entropy of the distribution each token came from   (nats)

and the intervals around them: :func:`bootstrap_interval` (percentile bootstrap over clusters, such as
prompts, seeded so that the same data give the same interval), :func:`jackknife_interval` (for statistics that
a resample with repeated texts biases) and :func:`ratio_of_sums` for the metrics above that are sums over texts.
Self-BLEU uses nltk's BLEU, imported when called: ``pip install 'decoders-lab[metrics]'``. MAUVE needs numpy alone
(its own PCA and k-means; the ``mauve-text`` package, which the tests compare it with, is only in the
``research`` extra).
"""

from __future__ import annotations

import copy
import inspect
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


def _padded(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for a batch of token id lists."""
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(list(tokens))
        mask[row, : len(tokens)] = 1
    return ids.to(device), mask.to(device)


def _final_hidden_states(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last layer's hidden states ``[B, T, H]``: the base model's output (after the final norm, before the LM
    head) for a transformers causal LM, else the last of ``hidden_states``."""
    base = getattr(model, "base_model", None)
    if base is not None and base is not model:
        return base(input_ids=ids, attention_mask=mask).last_hidden_state
    return model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]


@torch.inference_mode()
def text_features(
    scorer: Any, token_ids: Sequence[Sequence[int]], *, pooling: str = "last", batch_size: int = 16
) -> torch.Tensor:
    """One vector per text from the model's last hidden state: the last token's (``"last"``) or the mean over the
    text's tokens (``"mean"``).

    The text is encoded on its own (no other context), right-padded in batches of ``batch_size``; padding is
    left out. With a transformers causal LM, the last hidden state is the output of its base model (after the
    final norm, before the LM head). ``"last"`` is what MAUVE's features are (Pillutla et al. 2021 and the
    ``mauve-text`` package take GPT-2 large's final hidden state at the text's last token: in a causal LM it is
    the one position that has attended to the whole text); ``"mean"`` is :func:`mean_pooled_embeddings`.

    Args:
        scorer: a LoadedModel, a ``(model, tokenizer)`` pair, or a causal LM that takes
            ``output_hidden_states=True``.
        token_ids: one non-empty list of token ids per text.
        pooling: ``"last"`` or ``"mean"``.
        batch_size: texts per forward pass.

    Returns:
        a float tensor ``[len(token_ids), hidden size]``.

    Example:
        >>> text_features(loaded, [[1, 2, 3], [4]], pooling="last").shape  # doctest: +SKIP
        torch.Size([2, 576])
    """
    if pooling not in ("last", "mean"):
        raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
    if any(len(ids) == 0 for ids in token_ids):
        raise ValueError("every text needs at least one token to be embedded")
    model = _torch_model(scorer)
    device = next(model.parameters()).device
    vectors = []
    for start in range(0, len(token_ids), batch_size):
        rows = token_ids[start : start + batch_size]
        ids, mask = _padded(rows, device)
        hidden = _final_hidden_states(model, ids, mask)
        if pooling == "last":
            ends = torch.tensor([len(tokens) - 1 for tokens in rows], device=hidden.device)
            vectors.append(hidden[torch.arange(len(rows), device=hidden.device), ends].float().cpu())
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            vectors.append(((hidden * weights).sum(dim=1) / weights.sum(dim=1)).float().cpu())
    return torch.cat(vectors)


@torch.inference_mode()
def continuation_features(
    scorer: Any, prompt_ids: Sequence[Sequence[int]], continuation_ids: Sequence[Sequence[int]], *,
    pooling: str = "last", batch_size: int = 16,
) -> torch.Tensor:  # fmt: skip
    """:func:`text_features` of each prompt + continuation, with every distinct prompt run once.

    The rows that share a prompt reuse its key/value cache: the prompt's tokens are run once, then its rows'
    continuations (right-padded, ``batch_size`` at a time) attend to it, so a prompt shared by many generations
    is not recomputed for each (MAUVE featurizes prompt + continuation, as the paper does). The same vectors as
    :func:`text_features` of the concatenations, up to the numerics of the split; a model without a base model
    (or without a cache) gets exactly that.

    Args:
        scorer: a LoadedModel, a ``(model, tokenizer)`` pair, or a causal LM.
        prompt_ids: one non-empty list of token ids per text.
        continuation_ids: the token ids that follow each prompt (may be empty: the prompt alone).
        pooling: ``"last"`` or ``"mean"`` (over the prompt's and the continuation's tokens).
        batch_size: continuations per forward pass.

    Example:
        >>> continuation_features(loaded, [[1, 2], [1, 2]], [[3], [4, 5]]).shape  # doctest: +SKIP
        torch.Size([2, 576])
    """
    if len(prompt_ids) != len(continuation_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(continuation_ids)} continuations: one of each per text")
    if pooling not in ("last", "mean"):
        raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    model = _torch_model(scorer)
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        texts = [list(p) + list(c) for p, c in zip(prompt_ids, continuation_ids)]
        return text_features(scorer, texts, pooling=pooling, batch_size=batch_size)
    device = next(model.parameters()).device
    # transformers 5 renamed past_key_values to cache (the old name warns until it is removed)
    cache_name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, prompt in enumerate(prompt_ids):
        groups.setdefault(tuple(prompt), []).append(index)
    vectors: list[torch.Tensor | None] = [None] * len(prompt_ids)
    for prompt, members in groups.items():
        ids = torch.tensor([prompt], device=device)
        run = base(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        cache = getattr(run, "cache", None) or getattr(run, "past_key_values", None)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):  # no reusable cache: the whole texts
            texts = [list(prompt) + list(continuation_ids[i]) for i in members]
            for index, vector in zip(members, text_features(scorer, texts, pooling=pooling, batch_size=batch_size)):
                vectors[index] = vector
            continue
        prompt_states = run.last_hidden_state[0].float()
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            rows = [list(continuation_ids[i]) for i in chunk]
            states = None
            if any(rows):
                tokens, mask = _padded([row or [0] for row in rows], device)
                mask[[r for r, row in enumerate(rows) if not row], 0] = 0
                expanded = copy.deepcopy(cache)
                expanded.batch_repeat_interleave(len(chunk))
                full_mask = torch.cat([torch.ones((len(chunk), len(prompt)), dtype=mask.dtype, device=device), mask], 1)
                states = base(
                    input_ids=tokens, attention_mask=full_mask, use_cache=True, **{cache_name: expanded}
                ).last_hidden_state.float()
            for r, index in enumerate(chunk):
                n = len(rows[r])
                if pooling == "last":
                    vectors[index] = (states[r, n - 1] if n else prompt_states[-1]).cpu()
                else:
                    total = prompt_states.sum(dim=0) + (states[r, :n].sum(dim=0) if n else 0)
                    vectors[index] = (total / (len(prompt) + n)).cpu()
    return torch.stack(vectors)


def mean_pooled_embeddings(scorer: Any, token_ids: Sequence[Sequence[int]], *, batch_size: int = 16) -> torch.Tensor:
    """One vector per text: the model's last hidden state, averaged over the text's tokens.

    The text is encoded on its own (no other context), right-padded in batches of ``batch_size``; padding is
    left out of the mean. With a transformers causal LM, the last hidden state is the output of its base model
    (after the final norm, before the LM head). :func:`text_features` with ``pooling="mean"``.

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
    return text_features(scorer, token_ids, pooling="mean", batch_size=batch_size)


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


#: the defaults of the ``mauve-text`` package (0.4), which follow Pillutla et al. 2021
MAUVE_SCALING = 5.0
MAUVE_CURVE_POINTS = 25
MAUVE_EXPLAINED_VARIANCE = 0.9
MAUVE_KMEANS_REDO = 5
MAUVE_KMEANS_MAX_ITER = 500
MAUVE_SEED = 25


def mauve(
    p_features: Any, q_features: Any, *, num_buckets: int | str = "auto",
    kmeans_explained_var: float = MAUVE_EXPLAINED_VARIANCE, kmeans_num_redo: int = MAUVE_KMEANS_REDO,
    kmeans_max_iter: int = MAUVE_KMEANS_MAX_ITER, divergence_curve_discretization_size: int = MAUVE_CURVE_POINTS,
    mauve_scaling_factor: float = MAUVE_SCALING, seed: int = MAUVE_SEED,
) -> float:  # fmt: skip
    """MAUVE of Pillutla et al. 2021: how close the distribution of model texts Q is to that of human texts P.

    From Pillutla et al. 2021, "MAUVE: Measuring the Gap Between Neural Text and Human Text using Divergence
    Frontiers" (NeurIPS), as the ``mauve-text`` package (0.4) computes it from features, with its defaults:

    1. quantise (:func:`mauve_quantize`): the features of P and Q together, each row scaled to unit L2 norm, are
       projected by PCA onto the fewest principal components that explain ``kmeans_explained_var`` of their
       variance, and clustered by k-means into ``num_buckets`` buckets (``"auto"``: ``max(2, round(min(|P|,
       |Q|) / 10))``); P and Q become histograms ``p``, ``q`` over the buckets;
    2. the divergence curve (:func:`mauve_from_histograms`): for ``λ`` on ``divergence_curve_discretization_size``
       points of ``[10⁻⁶, 1 − 10⁻⁶]`` and ``r_λ = λ p + (1 − λ) q``, the points
       ``(exp(−c·KL(q‖r_λ)), exp(−c·KL(p‖r_λ)))`` with the scaling constant ``c = mauve_scaling_factor`` (5),
       plus the end points (0, 1) and (1, 0);
    3. MAUVE is the area under that curve (trapezoids, averaged over integrating along either axis): 1 when
       ``p = q``, towards 0 as they separate.

    Own implementation (numpy only, so no extra is needed): the k-means is Lloyd's algorithm from
    ``kmeans_num_redo`` random initialisations (the lowest inertia kept), where ``mauve-text`` calls faiss; the
    two can settle in different local optima, so values agree to about 0.01-0.02 on overlapping clouds, and
    exactly when the buckets are unambiguous (``tests/test_metrics.py`` checks both against ``mauve-text``).
    ``mauve-text``'s ``pca_max_data`` (PCA on a subsample) and its smoothed MAUVE* are not offered.

    Args:
        p_features: ``[N_p, D]`` features of the human texts.
        q_features: ``[N_q, D]`` features of the model texts.
        num_buckets: the number of k-means buckets, or ``"auto"``.
        kmeans_explained_var: the share of variance the PCA keeps (between 0 and 1).
        kmeans_num_redo: k-means runs from different random initialisations.
        kmeans_max_iter: at most this many Lloyd iterations per run.
        divergence_curve_discretization_size: points on the divergence curve.
        mauve_scaling_factor: the constant ``c``.
        seed: the seed of the k-means initialisations (the same features and seed give the same value).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> human, same = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
        >>> bool(mauve(human, same) > 0.9), bool(mauve(human, same + 4.0) < 0.1)
        (True, True)
    """
    p_labels, q_labels, buckets = mauve_quantize(
        p_features, q_features, num_buckets=num_buckets, kmeans_explained_var=kmeans_explained_var,
        kmeans_num_redo=kmeans_num_redo, kmeans_max_iter=kmeans_max_iter, seed=seed,
    )  # fmt: skip
    p_hist = np.bincount(p_labels, minlength=buckets).astype(float)
    q_hist = np.bincount(q_labels, minlength=buckets).astype(float)
    return float(
        mauve_from_histograms(
            p_hist, q_hist, divergence_curve_discretization_size=divergence_curve_discretization_size,
            mauve_scaling_factor=mauve_scaling_factor,
        )
    )  # fmt: skip


def mauve_buckets(p_count: int, q_count: int, num_buckets: int | str = "auto") -> int:
    """The number of k-means buckets: ``num_buckets``, or for ``"auto"`` ``max(2, round(min(p_count, q_count) / 10))``
    (``mauve-text``'s rule: about ten texts per bucket).

    Example:
        >>> mauve_buckets(200, 600), mauve_buckets(8, 24), mauve_buckets(8, 24, 3)
        (20, 2, 3)
    """
    if num_buckets == "auto":
        return max(2, round(min(p_count, q_count) / 10))
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, (int, np.integer)) or num_buckets < 1:
        raise ValueError(f"num_buckets must be 'auto' or a positive integer, got {num_buckets!r}")
    return int(num_buckets)


def mauve_quantize(
    p_features: Any, q_features: Any, *, num_buckets: int | str = "auto",
    kmeans_explained_var: float = MAUVE_EXPLAINED_VARIANCE, kmeans_num_redo: int = MAUVE_KMEANS_REDO,
    kmeans_max_iter: int = MAUVE_KMEANS_MAX_ITER, seed: int = MAUVE_SEED,
) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
    """MAUVE's quantisation: the k-means bucket of every text of P and of Q, fitted on both together.

    Each feature row is scaled to unit L2 norm; PCA (centred, not whitened) keeps the fewest leading components
    whose explained variance reaches ``kmeans_explained_var``; k-means (Lloyd's algorithm, ``kmeans_num_redo``
    runs from ``num_buckets`` distinct random texts, the run of lowest inertia kept; a bucket left empty takes
    the text farthest from its centroid) then assigns each text to its nearest centroid. See :func:`mauve`.

    Returns:
        ``(p_labels, q_labels, num_buckets)``: a bucket index per row of ``p_features`` and of ``q_features``.

    Example:
        >>> p, q, k = mauve_quantize(np.eye(4)[[0, 0, 1, 1]], np.eye(4)[[0, 1, 1, 1]], num_buckets=2)
        >>> k, p.tolist() == [p[0], p[0], 1 - p[0], 1 - p[0]], q.tolist() == [p[0]] + [p[2]] * 3
        (2, True, True)
    """
    p = np.asarray(p_features, dtype=np.float64)
    q = np.asarray(q_features, dtype=np.float64)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(
            f"MAUVE needs two feature matrices [texts, features] of the same width, got {p.shape} and {q.shape}"
        )
    if len(p) == 0 or len(q) == 0:
        raise ValueError("MAUVE needs at least one text on each side")
    buckets = mauve_buckets(len(p), len(q), num_buckets)
    data = np.vstack([q, p])  # Q first, as mauve-text stacks them
    if buckets > len(data):
        raise ValueError(f"{buckets} buckets for {len(data)} texts: k-means needs at least one text per bucket")
    reduced = mauve_pca(data, kmeans_explained_var)
    labels = _kmeans(reduced, buckets, redo=kmeans_num_redo, max_iter=kmeans_max_iter, seed=seed)
    return labels[len(q) :], labels[: len(q)], buckets


def mauve_pca(features: Any, explained_variance: float = MAUVE_EXPLAINED_VARIANCE) -> np.ndarray:
    """The features MAUVE's k-means clusters: each row scaled to unit L2 norm, centred, and projected onto the
    fewest principal components whose explained variance reaches ``explained_variance`` (not whitened).

    Example:
        >>> mauve_pca([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]], 0.9).shape
        (3, 1)
    """
    data = np.asarray(features, dtype=np.float64)
    if not 0 < explained_variance < 1:
        raise ValueError(f"kmeans_explained_var must be between 0 and 1, got {explained_variance}")
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    data = data / np.where(norms > 0, norms, 1.0)
    centred = data - data.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    total = variance.sum()
    kept = 1 if total == 0 else int(np.argmax(np.cumsum(variance) / total >= explained_variance)) + 1
    return centred @ components[:kept].T


def _nearest(data: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid and its squared distance."""
    distances = (data**2).sum(axis=1)[:, None] - 2 * data @ centroids.T + (centroids**2).sum(axis=1)[None, :]
    labels = distances.argmin(axis=1)
    return labels, np.maximum(distances[np.arange(len(data)), labels], 0.0)


def _kmeans(data: np.ndarray, k: int, *, redo: int, max_iter: int, seed: int) -> np.ndarray:
    """Lloyd's k-means, the best (lowest inertia) of ``redo`` runs from ``k`` distinct random rows; the labels."""
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(max(1, redo)):
        centroids = data[rng.choice(len(data), size=k, replace=False)]
        labels = None
        for _ in range(max(1, max_iter)):
            new, distances = _nearest(data, centroids)
            empty = np.flatnonzero(np.bincount(new, minlength=k) == 0)
            if len(empty):  # an empty bucket restarts at the rows farthest from their centroids
                new[np.argsort(-distances, kind="stable")[: len(empty)]] = empty
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            sums = np.zeros_like(centroids)
            np.add.at(sums, labels, data)
            centroids = sums / np.bincount(labels, minlength=k)[:, None]
        labels, distances = _nearest(data, centroids)
        inertia = float(distances.sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def mauve_from_histograms(
    p_hist: Any, q_hist: Any, *, divergence_curve_discretization_size: int = MAUVE_CURVE_POINTS,
    mauve_scaling_factor: float = MAUVE_SCALING,
) -> np.ndarray:  # fmt: skip
    """MAUVE of two histograms over the same buckets (counts or weights; each is normalised to sum 1).

    The area under the divergence curve ``{(exp(−c·KL(q‖r_λ)), exp(−c·KL(p‖r_λ)))}``, ``r_λ = λ p + (1 − λ) q``,
    with the end points (0, 1) and (1, 0), by trapezoids, the mean of the areas taken along either axis (as
    ``mauve-text`` computes it). Points that tie on the axis of integration are taken in their order along the
    curve, so ``p = q`` gives 1 (``mauve-text``'s unstable sort leaves them in any order: it returns 0.75 for two
    equal 2-bucket histograms); without ties the two agree to rounding. Vectorised: leading dimensions are
    batches, so ``[B, K]`` histograms (one bootstrap resample per row) give ``B`` values.

    Example:
        >>> float(mauve_from_histograms([1, 1], [1, 1]))
        1.0
        >>> round(float(mauve_from_histograms([9, 1], [1, 9])), 4)
        0.0826
    """
    p = np.asarray(p_hist, dtype=np.float64)
    q = np.asarray(q_hist, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"the histograms have different shapes: {p.shape} and {q.shape}")
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    weights = np.linspace(1e-6, 1 - 1e-6, divergence_curve_discretization_size)[:, None]
    mixtures = weights * p[..., None, :] + (1 - weights) * q[..., None, :]  # [..., points, buckets]

    def kl(a: np.ndarray) -> np.ndarray:  # KL(a ‖ r) for every mixture r; r > 0 wherever a > 0
        a = a[..., None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log(a / mixtures), 0.0).sum(axis=-1)

    shape = p.shape[:-1]
    x = np.concatenate([np.ones(shape + (1,)), np.exp(-mauve_scaling_factor * kl(q)), np.zeros(shape + (1,))], -1)
    y = np.concatenate([np.zeros(shape + (1,)), np.exp(-mauve_scaling_factor * kl(p)), np.ones(shape + (1,))], -1)

    def area(u: np.ndarray, v: np.ndarray) -> np.ndarray:  # along u, ties in u ordered along the curve (v falling)
        order = np.lexsort((-v, u), axis=-1)
        u, v = np.take_along_axis(u, order, -1), np.take_along_axis(v, order, -1)
        return (np.diff(u, axis=-1) * (v[..., 1:] + v[..., :-1]) / 2).sum(axis=-1)

    return np.clip(0.5 * (area(x, y) + area(y, x)), 0.0, 1.0)  # rounding can step past 1 by 1e-16


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
