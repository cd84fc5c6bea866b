"""The vLLM side: :class:`DecodersLogitsProcessor`, registered in the ``vllm.logits_processors`` entry-point group.

vLLM builds one instance per model worker (``__init__(vllm_config, device, is_pin_memory)``) and calls
:meth:`~DecodersLogitsProcessor.update_state` before every forward pass and :meth:`~DecodersLogitsProcessor.apply`
in its sampler, before its own penalties, temperature, top-k/top-p and sampling (the processor is not
argmax-invariant, so it runs for greedy requests too). Everything else is :class:`decoders_vllm.rows.DecodersRows`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from decoders_vllm.rows import DecodersRows, eos_ids, request_strategy

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

logger = logging.getLogger("decoders_vllm")

__all__ = ["DecodersLogitsProcessor"]


def _load_tokenizer(model_config: Any) -> Any:
    """The model's Hugging Face tokenizer (what DRY's breakers and grammars read)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        model_config.tokenizer,
        revision=getattr(model_config, "tokenizer_revision", None),
        trust_remote_code=bool(getattr(model_config, "trust_remote_code", False)),
    )


class DecodersLogitsProcessor(LogitsProcessor):
    """Runs a request's decoders strategy, ``SamplingParams(extra_args={"decoders": STRATEGY})``, on its logits row.

    ``STRATEGY`` is a preset name, a strategy dict, or a strategy as JSON text (over HTTP:
    ``extra_body={"vllm_xargs": {"decoders": json.dumps(strategy)}}``). Its processors run in their order on that
    request's row only; vLLM's sampler then picks the token: the ``greedy`` selector needs ``temperature=0``, the
    ``sample`` selector ``temperature > 0`` (leave vLLM's temperature 1, top_p 1, top_k 0 so that it does not reshape
    the distribution again). Requests without the key are left alone.

    Args:
        vllm_config: the engine's config (its model config gives the tokenizer, the EOS ids, the engine's seed).
        device: where the logits live.
        is_pin_memory: unused.

    Example:
        >>> from vllm import LLM, SamplingParams  # doctest: +SKIP
        >>> llm = LLM(model_dir, enforce_eager=True)  # doctest: +SKIP
        >>> llm.generate(["Hi"], SamplingParams(temperature=0, extra_args={"decoders": {"processors": [
        ...     {"kind": "repetition_penalty", "repetition_penalty": 1.3}]}}))  # doctest: +SKIP
    """

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Refuse a bad strategy before the request runs (a ``ValueError`` in decoders' words: vLLM raises it as a
        ``VLLMValidationError`` offline and answers HTTP 400 on the server)."""
        request_strategy(sampling_params.extra_args, sampling_params.temperature)

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        model_config = vllm_config.model_config
        hf_config = getattr(model_config, "hf_config", None)
        try:
            generation = model_config.try_get_generation_config() or {}
        except Exception:  # noqa: BLE001 - a model without a generation config
            generation = {}
        eos = eos_ids(getattr(hf_config, "eos_token_id", None), generation.get("eos_token_id"))
        self.device = device
        self.rows = DecodersRows(
            tokenizer=lambda: _load_tokenizer(model_config), eos_token_ids=eos, seed=getattr(model_config, "seed", None)
        )

    def is_argmax_invariant(self) -> bool:
        """False: a strategy changes which token is most likely (penalties, bans), so it runs before greedy too."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        self.rows.update(batch_update)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.rows.apply(logits)
