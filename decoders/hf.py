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
    ``GenerationConfig``), so the chain's selector is not used. A call whose ``input_ids`` are the previous
    call's plus one token is the next step: the chain is told that token (``chain.accept``); any other call
    starts a new generation and resets the chain, so stateful processors work too.

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
        self._length: int | None = None
        self._last_tokens: torch.Tensor | None = None

    def _continues(self, input_ids: torch.LongTensor) -> bool:
        """Whether ``input_ids`` is the previous call's sequence plus one token."""
        previous = self._last_tokens
        return (
            previous is not None
            and input_ids.shape[1] == self._length + 1
            and input_ids.shape[0] == previous.shape[0]
            and torch.equal(input_ids[:, -2], previous)
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._continues(input_ids):
            self.chain.accept(input_ids[:, -1])
        else:
            self.chain.reset(
                DecodeContext(
                    prompt_length=input_ids.shape[1], eos_token_ids=self.eos_token_ids, tokenizer=self.tokenizer
                )
            )
        self._length, self._last_tokens = input_ids.shape[1], input_ids[:, -1].clone()
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
