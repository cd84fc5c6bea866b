"""DoLa (Chuang et al. 2024, "DoLa: Decoding by Contrasting Layers Improves Factuality in Large Language Models").

At each step, per row: read the model's early layers as if they were its last (an *early exit*: the model's final
normalisation, then its LM head, applied to the layer's hidden state); among the candidate layers take the one
whose next-token distribution q_j differs most from the final layer's p (largest Jensen–Shannon divergence); then
score every token by how much more likely the final layer finds it than that *premature* layer:

    scores = log p − log q_M                      for tokens with p ≥ relative_top · max p
    scores = −inf                                 for the others (the adaptive plausibility constraint)

The chain's processors then run on these scores and its selector picks the token, as in the single search.
Facts a model learns late in depth get amplified; tokens the early layers already predict (function words,
copying) get flattened.

The candidate layers (``dola_layers``) follow transformers' ``generate(dola_layers=...)``: ``"low"``, ``"high"``
or a list of indices into ``output_hidden_states`` (0 is the embeddings' output, i is layer i's output); see
:func:`candidate_layers`. The paper and transformers recommend ``repetition_penalty`` 1.2 with DoLa: add the
processor ``{"kind": "repetition_penalty", "repetition_penalty": 1.2}`` to the chain.

Where this differs from transformers' former ``_dola_decoding`` (now Hub code, transformers-community/dola):

* the early exit applies the model's final norm before the LM head (transformers applied the head alone to the
  un-normalised hidden state, which the head was never trained on);
* the divergence is the Jensen–Shannon divergence the paper defines, ½ KL(p‖m) + ½ KL(q‖m) with m = ½(p + q)
  (transformers' code computed ½ KL(m‖p) + ½ KL(m‖q) averaged over the vocabulary);
* the premature layer is chosen per row (transformers averaged the divergences over the batch and used one layer
  for all rows), so a row's tokens do not depend on the rest of its batch;
* a layer index out of range is an error (transformers silently dropped indices ≥ the number of layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, NonNegativeInt, field_validator

from decoders.config import SearchConfig
from decoders.errors import GenerationError
from decoders.searches.base import RowTracker, Search, SearchJob, SearchRun

#: ``"low"``, ``"high"``, or layer indices (0 is the embeddings' output, i is layer i's output)
DolaLayers = Literal["low", "high"] | Annotated[list[NonNegativeInt], Field(min_length=1)]

#: where decoder-only models keep their final norm, relative to the base model (Llama/Mistral/Qwen/Gemma: norm,
#: GPT-2/Falcon/Bloom: ln_f, GPT-NeoX: final_layer_norm, Phi: final_layernorm, MPT: norm_f, OPT: decoder.…)
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "decoder.final_layer_norm")


# ---- the math: pure functions ---------------------------------------------------------------------------------


def candidate_layers(n_layers: int, dola_layers: str | Sequence[int], tied: bool) -> list[int]:
    """The premature-layer candidates of a model with ``n_layers`` layers, as transformers chose them.

    Indices are into ``output_hidden_states``: 0 is the embeddings' output, ``i`` the output of layer ``i``;
    ``n_layers`` (the final layer) is what the candidates are contrasted with, never a candidate.

    * ``"low"``: every other layer from ``start`` up to ``n_layers // 2`` (up to 20 when ``n_layers > 40``);
      only ``start`` when ``start == n_layers // 2``;
    * ``"high"``: every other layer from ``n_layers // 2`` up to ``n_layers`` (from ``n_layers - 20`` when
      ``n_layers > 40``);
    * a list: those layers, each in ``[0, n_layers)``.

    ``start`` is 0, except for models with tied word embeddings, whose early exit at the embeddings is almost the
    identity: 2 for more than 2 layers, 1 for 2 layers.

    Args:
        n_layers: the model's number of layers N (``len(output_hidden_states) - 1``).
        dola_layers: ``"low"``, ``"high"`` or a list of layer indices.
        tied: whether the model ties its LM head to its input embeddings.

    Raises:
        GenerationError: an index out of range, or a choice that selects no layer for this model.

    Example:
        >>> candidate_layers(32, "high", tied=False), candidate_layers(32, "low", tied=True)
        ([16, 18, 20, 22, 24, 26, 28, 30], [2, 4, 6, 8, 10, 12, 14])
    """
    if isinstance(dola_layers, str):
        if dola_layers not in ("low", "high"):
            raise GenerationError(f"dola_layers must be 'low', 'high' or a list of layer indices, got {dola_layers!r}")
        if dola_layers == "high":
            layers = list(range(n_layers // 2 if n_layers <= 40 else n_layers - 20, n_layers, 2))
        else:
            start = 0 if not tied else 2 if n_layers > 2 else 1 if n_layers == 2 else 0
            end = n_layers // 2 if n_layers <= 40 else 20
            layers = [start] if start == n_layers // 2 else list(range(start, end, 2))
        if not layers:
            raise GenerationError(
                f"dola_layers {dola_layers!r} selects no layer of this {n_layers}-layer model"
                f"{' with tied word embeddings (whose first layers are skipped)' if tied else ''}: give a list of "
                f"layer indices in [0, {n_layers}) instead"
            )
        return layers
    layers = list(dola_layers)
    if not layers:
        raise GenerationError(
            "dola_layers is an empty list: give 'low', 'high' or at least one layer index (0 is the embeddings' output)"
        )
    bad = [index for index in layers if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_layers]
    if bad:
        raise GenerationError(
            f"dola_layers {layers} names layer{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}, but this model "
            f"has {n_layers} layers: give indices from 0 (the embeddings' output) to {n_layers - 1} (layer "
            f"{n_layers}, the final one, is what DoLa contrasts with), or 'low' / 'high'"
        )
    return layers


def js_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """The Jensen–Shannon divergence ½ KL(p‖m) + ½ KL(q‖m), m = ½(p + q), over the last dimension (in nats).

    Args:
        log_p: log-probabilities ``[..., V]``.
        log_q: log-probabilities, broadcastable with ``log_p``.
    """
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)

    def kl_to_m(log_x: torch.Tensor) -> torch.Tensor:
        x = log_x.exp()
        return torch.where(x > 0, x * (log_x - log_m), 0.0).sum(dim=-1)  # 0 · log 0 = 0

    return 0.5 * (kl_to_m(log_p) + kl_to_m(log_q))


def premature_layer(final_log_probs: torch.Tensor, layer_log_probs: torch.Tensor) -> torch.LongTensor:
    """Per row, the candidate whose distribution is farthest from the final layer's (largest JS divergence).

    Args:
        final_log_probs: the final layer's log-probabilities ``[R, V]``.
        layer_log_probs: each candidate's log-probabilities ``[C, R, V]``.

    Returns:
        ``[R]`` indices into the ``C`` candidates (the first one on a tie).
    """
    return js_divergence(final_log_probs.unsqueeze(0), layer_log_probs).argmax(dim=0)


def plausible(log_probs: torch.Tensor, relative_top: float = 0.1, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """The adaptive plausibility constraint: True for tokens with p ≥ ``relative_top`` · (the row's max p).

    As transformers' ``_relative_top_filter``: the threshold is lowered, when needed, to keep the
    ``min_tokens_to_keep`` most likely tokens.

    Args:
        log_probs: log-probabilities ``[R, V]`` (the final layer's).
        relative_top: in (0, 1].
        min_tokens_to_keep: ≥ 1.
    """
    top = torch.topk(log_probs, min_tokens_to_keep, dim=-1).values
    threshold = torch.minimum(top[:, -1], top[:, 0] + math.log(relative_top))
    return log_probs >= threshold.unsqueeze(-1)


def dola_scores(
    final_logits: torch.Tensor, layer_logits: torch.Tensor, relative_top: float = 0.1, min_tokens_to_keep: int = 1
) -> torch.Tensor:
    """DoLa's next-token scores ``[R, V]``: log p − log q_M where plausible, ``-inf`` elsewhere.

    p is softmax(``final_logits``), q_M the softmax of the candidate chosen by :func:`premature_layer` for the
    row, and plausible is :func:`plausible` of p.

    Args:
        final_logits: the model's logits ``[R, V]``.
        layer_logits: the candidates' early-exit logits ``[C, R, V]`` (see :class:`EarlyExit`).
        relative_top: the plausibility constraint's fraction of the most likely token's probability.
        min_tokens_to_keep: the plausibility constraint keeps at least this many tokens.

    Example:
        >>> final = torch.tensor([[4.0, 3.5, 0.0]])  # the model prefers token 0, a little
        >>> early = torch.tensor([[[4.0, 3.5, 0.0]], [[6.0, 2.0, 0.0]]])  # the second layer differs: it is q_M
        >>> dola_scores(final, early).round(decimals=2)  # token 1 gained most in depth; token 2 is implausible
        tensor([[-0.4600,  3.0400,    -inf]])
    """
    log_p = torch.log_softmax(final_logits.float(), dim=-1)
    log_q = torch.log_softmax(layer_logits.float(), dim=-1)
    chosen = premature_layer(log_p, log_q)
    base = log_q[chosen, torch.arange(log_p.shape[0], device=log_p.device)]
    return (log_p - base).masked_fill(~plausible(log_p, relative_top, min_tokens_to_keep), float("-inf"))


# ---- the model's early exits ------------------------------------------------------------------------------------


def final_norm(model: Any) -> torch.nn.Module:
    """The normalisation a decoder-only model applies after its last layer (``model.model.norm`` for Llama,
    ``model.transformer.ln_f`` for GPT-2, …: see :data:`FINAL_NORM_NAMES`).

    Raises:
        GenerationError: the model has none of them.
    """
    roots: list[tuple[str, Any]] = []
    for name in ("base_model", "model", "transformer"):
        root = getattr(model, name, None)
        if isinstance(root, torch.nn.Module) and root is not model and all(root is not seen for _, seen in roots):
            roots.append((f"{name}.", root))
    roots.append(("", model))
    tried = []
    for prefix, root in roots:
        for path in FINAL_NORM_NAMES:
            tried.append(prefix + path)
            found: Any = root
            for part in path.split("."):
                found = getattr(found, part, None)
            if isinstance(found, torch.nn.Module):
                return found
    raise GenerationError(
        f"DoLa applies the model's final norm and LM head to early layers, and cannot find the final norm of "
        f"{type(model).__name__} (tried {', '.join(tried)}): use a decoder-only model that has one (Llama's "
        "model.norm, GPT-2's transformer.ln_f, …), or another search"
    )


def lm_head(model: Any) -> torch.nn.Module:
    """The model's output layer (``get_output_embeddings()``, else ``lm_head``).

    Raises:
        GenerationError: the model has none.
    """
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    head = head if head is not None else getattr(model, "lm_head", None)
    if not isinstance(head, torch.nn.Module):
        raise GenerationError(
            f"DoLa applies the model's LM head to early layers, and {type(model).__name__} has none "
            "(no get_output_embeddings() or lm_head): use another search"
        )
    return head


def tied_embeddings(model: Any) -> bool:
    """Whether the model's LM head shares its weights with the input embeddings (its config's
    ``tie_word_embeddings``, as transformers read it; else whether the two weights are one tensor)."""
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", None)
    if isinstance(tied, bool):
        return tied
    inputs = getattr(model, "get_input_embeddings", lambda: None)()
    head = lm_head(model)
    return inputs is not None and getattr(inputs, "weight", None) is getattr(head, "weight", False)


class EarlyExit:
    """A model's early exits: its final norm, then its LM head, applied to any layer's hidden states.

    Args:
        model: a decoder-only causal LM (see :func:`final_norm` and :func:`lm_head`).

    Example:
        >>> exits = EarlyExit(model)  # doctest: +SKIP
        >>> exits(session.forward(layers=True).layers, [0, 2]).shape  # doctest: +SKIP
        torch.Size([2, 3, 49152])
    """

    def __init__(self, model: Any):
        self.norm = final_norm(model)
        self.head = lm_head(model)
        self.tied = tied_embeddings(model)

    def __call__(self, layers: Sequence[torch.Tensor], indices: Sequence[int]) -> torch.Tensor:
        """The early-exit logits ``[C, R, V]`` (float32) of layers ``indices`` of ``layers`` (``[R, H]`` each)."""
        return self.head(self.norm(torch.stack([layers[index] for index in indices]))).float()


# ---- the search -------------------------------------------------------------------------------------------------


class DolaSearch(Search):
    """DoLa: one hypothesis per prompt, each token chosen from the contrast of the final and an early layer.

    Per step and row, the scores given to the chain are :func:`dola_scores` of the model's logits and the
    early exits of the candidate layers (see the module docstring); the chain's processors and selector do the
    rest, as in the single search (greedy by default; sampling works too). Needs a decoder-only model whose
    final norm :func:`final_norm` finds and whose forward returns ``output_hidden_states``.

    Args:
        dola_layers: ``"low"``, ``"high"``, or a list of layer indices (0 is the embeddings' output); see
            :func:`candidate_layers`. ``"high"`` suits short factual answers, ``"low"`` long reasoning.
        relative_top: the adaptive plausibility constraint: only tokens with probability ≥ this fraction of the
            most likely token's (under the final layer) can be chosen.

    Example:
        >>> strategy = {"processors": [{"kind": "repetition_penalty", "repetition_penalty": 1.2}],
        ...             "search": {"kind": "dola", "dola_layers": "high"}}
        >>> decoders.generate("The capital of France is", strategy, max_new_tokens=8).text  # doctest: +SKIP
    """

    per_row_chains = True

    def __init__(self, dola_layers: str | Sequence[int] = "high", relative_top: float = 0.1):
        self.dola_layers = dola_layers
        self.relative_top = relative_top

    def run(self, job: SearchJob) -> SearchRun:
        """:class:`~decoders.searches.single.SingleSearch`'s loop; only the scores given to the chain differ."""
        session, chain, batch = job.session, job.chain, job.batch
        exits, layers = EarlyExit(session.model), None
        tracker = RowTracker(job)
        while True:
            output = session.forward(layers=True)
            if layers is None:  # the model's depth is known from its first forward
                layers = candidate_layers(len(output.layers) - 1, self.dola_layers, exits.tied)
            logits = output.logits
            contrast = dola_scores(logits, exits(output.layers, layers), self.relative_top)
            stages, observer = tracker.observer(logits)
            if stages is not None:
                stages.append(("dola", contrast))
            scores = chain.run(session.ids, contrast, observer)
            tokens = tracker.hold_finished(chain.choose(scores, tracker.generators))
            batch.append(tokens)
            yield tracker.record(logits, scores, tokens, stages)
            if tracker.done:
                break
            tracker.leave()
        return tracker.outcomes()


class DolaConfig(SearchConfig):
    """DoLa: contrast the final layer with an early one for more factual text (use repetition_penalty 1.2).

    Args:
        dola_layers: ``"low"``, ``"high"`` (the default), or a non-empty list of layer indices, as transformers'
            ``dola_layers`` (see :func:`candidate_layers`).
        relative_top: in (0, 1]; the adaptive plausibility constraint (0.1 in the paper and transformers).

    Example:
        >>> DolaConfig(dola_layers=[0, 2, 4]).build()
        DolaSearch(dola_layers=[0, 2, 4], relative_top=0.1)
    """

    kind: Literal["dola"] = "dola"
    dola_layers: DolaLayers = Field(
        default="high",
        description="candidate premature layers: 'low', 'high', or layer indices (0 is the embeddings' output)",
    )
    relative_top: float = Field(
        default=0.1, gt=0, le=1, description="only tokens with p ≥ relative_top × the top token's p can be chosen"
    )

    @field_validator("dola_layers", mode="before")
    @classmethod
    def _check_layers(cls, value: Any) -> Any:
        """One clear message for each bad value (instead of one per member of the union)."""
        allowed = "'low', 'high', or a list of layer indices such as [0, 2, 4] (0 is the embeddings' output)"
        if isinstance(value, str):
            if value not in ("low", "high"):
                raise ValueError(f"dola_layers must be {allowed}, got {value!r}")
        elif isinstance(value, list | tuple):
            if not value:
                raise ValueError(f"dola_layers is an empty list: give {allowed}")
            bad = [index for index in value if isinstance(index, bool) or not isinstance(index, int) or index < 0]
            if bad:
                raise ValueError(f"dola_layers holds {', '.join(map(repr, bad))}: layer indices are whole numbers ≥ 0")
            value = list(value)
        else:
            raise ValueError(f"dola_layers must be {allowed}, got {value!r}")
        return value

    def build(self) -> DolaSearch:
        return DolaSearch(self.dola_layers, self.relative_top)
