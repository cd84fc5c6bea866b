"""Interop with transformers: a chain as a ``LogitsProcessor``, and a model's own defaults as a Strategy."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

from decoders.chain import Chain
from decoders.processors.base import DecodeContext
from decoders.strategy import Strategy


class ChainLogitsProcessor(LogitsProcessor):
    """Run a built chain's processors inside ``model.generate`` (dense scores in, dense scores out).

    Only the processors run: transformers still picks the token (greedy or sampling, by its own
    ``GenerationConfig``), so the chain's selector is not used. transformers does not say which row a call's
    row continues, so the history says it: when every row of a call is some row of the previous call plus one
    token, that is the next step, and the chain follows it exactly as decoders' own searches do
    (``chain.reorder`` with each row's parent when beam search reordered them, then ``chain.accept`` of the
    new tokens). Any other call starts a new generation and resets the chain. A row that has written an EOS id
    before the newest token is marked not live (:attr:`DecodeContext.live`): its padding is not a token of its text. Stateful processors therefore
    work under greedy, sampling and beam search (rows with identical histories have identical state, so
    which of them a row is matched to does not matter).

    Args:
        chain: a built chain (:meth:`Strategy.build`).
        eos_token_ids: the model's EOS ids, for processors that need them (e.g. ``min_new_tokens``).
        tokenizer: the model's tokenizer, for processors that take strings.

    Example:
        >>> from transformers import LogitsProcessorList
        >>> chain = Strategy.model_validate({"processors": [{"kind": "repetition_penalty", "repetition_penalty": 1.3}]}).build()
        >>> processors = LogitsProcessorList([ChainLogitsProcessor(chain)])
        >>> model.generate(**inputs, do_sample=False, logits_processor=processors)  # doctest: +SKIP
    """

    def __init__(self, chain: Chain, eos_token_ids: tuple[int, ...] = (), tokenizer: Any = None):
        self.chain = chain
        self.eos_token_ids = tuple(eos_token_ids)
        self.tokenizer = tokenizer
        self._previous: torch.Tensor | None = None

    def _parents(self, input_ids: torch.LongTensor) -> torch.LongTensor | None:
        """For each row, a row of the previous call that it extends by one token; None if some row extends none."""
        previous = self._previous
        if previous is None or input_ids.shape[1] != previous.shape[1] + 1 or input_ids.shape[0] != previous.shape[0]:
            return None
        same = (input_ids[:, None, :-1] == previous[None, :, :]).all(dim=-1)  # [new row, old row]
        if not bool(same.any(dim=-1).all()):
            return None
        return same.int().argmax(dim=-1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        parents = self._parents(input_ids)
        if parents is None:
            self.chain.reset(
                DecodeContext(
                    prompt_length=input_ids.shape[1], eos_token_ids=self.eos_token_ids, tokenizer=self.tokenizer
                )
            )
        else:
            if not bool((parents == torch.arange(len(parents), device=parents.device)).all()):
                self.chain.reorder(parents)
            if self.eos_token_ids:  # a row that wrote EOS before this token is padded: not live (DecodeContext.live)
                written = input_ids[:, self.chain.context.prompt_length : -1]
                eos = torch.tensor(self.eos_token_ids, device=input_ids.device)
                self.chain.context.live = ~torch.isin(written, eos).any(dim=-1)
            self.chain.accept(input_ids[:, -1])
        self._previous = input_ids.clone()
        return self.chain.process(input_ids, scores)


def strategy_to_logits_processor(
    strategy: Any, eos_token_ids: tuple[int, ...] = (), tokenizer: Any = None
) -> ChainLogitsProcessor:
    """A :class:`ChainLogitsProcessor` for anything :meth:`Strategy.resolve` accepts (its selector is not used).

    Args:
        strategy: a preset name, Strategy, dict, or path to a ``.json``/``.toml`` strategy file.
        eos_token_ids: the model's EOS ids, for processors that need them.
        tokenizer: the model's tokenizer, for processors that take strings.

    Example:
        >>> processor = strategy_to_logits_processor("top_k")
        >>> processor(torch.zeros(1, 1, dtype=torch.long), torch.arange(8.0).unsqueeze(0)).isfinite().sum().item()
        5
    """
    return ChainLogitsProcessor(Strategy.resolve(strategy).build(), eos_token_ids, tokenizer)


def generation_config_to_strategy(model: Any, *, strict: bool = False) -> Strategy:
    """The strategy a model's own ``generation_config`` asks for (see :meth:`Strategy.from_generation_config`).

    Args:
        model: a transformers model (anything with a ``generation_config``).
        strict: raise instead of warning when the config has fields decoders does not support.

    Example:
        >>> generation_config_to_strategy(model).describe()  # doctest: +SKIP
        'temperature(0.2) → top_p(0.9) → sample'
    """
    return Strategy.from_generation_config(model.generation_config, strict=strict)
