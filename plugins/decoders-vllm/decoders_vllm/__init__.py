"""decoders strategies inside vLLM: one V1 logits processor that runs each opted-in request's chain on its row.

    from vllm import LLM, SamplingParams
    llm = LLM(model, enforce_eager=True)          # the processor is loaded from the vllm.logits_processors entry point
    params = SamplingParams(temperature=1.0, extra_args={"decoders": {"processors": [...], "selector": {"kind": "sample"}}})

:mod:`decoders_vllm.rows` (no vLLM import) follows vLLM's batch with decoders' events and runs the chains;
:mod:`decoders_vllm.processor` is the ``vllm.v1.sample.logits_processor.LogitsProcessor`` around it (importing it
imports vLLM).
"""

from decoders_vllm.rows import EXTRA_ARG, DecodersRows, request_strategy, resolve_strategy

__all__ = ["EXTRA_ARG", "DecodersRows", "request_strategy", "resolve_strategy"]
