"""What the vLLM tests share: skip without vLLM, the environment vLLM needs on this CPU machine, the prompts."""

from __future__ import annotations

import importlib.metadata
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache (the default reserves most of the RAM)
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

SKIP_REASON = (
    "vLLM is not installed in this Python: the vLLM tests run in the project's vLLM environment "
    "(make setup-vllm; .venv-vllm/bin/python -m pytest plugins/decoders-vllm/tests)"
)

ENTRY_POINT = "decoders_vllm.processor:DecodersLogitsProcessor"


def require_vllm():
    """Import vllm or skip the module; fail when vLLM is there but the plugin's entry point is not installed."""
    vllm = pytest.importorskip("vllm", reason=SKIP_REASON)
    points = [e.value for e in importlib.metadata.entry_points(group="vllm.logits_processors")]
    if ENTRY_POINT not in points:
        pytest.fail(
            f"vLLM is installed but the decoders-vllm entry point is not ({points}): run "
            "bash plugins/decoders-vllm/setup-venv.sh (make setup-vllm)"
        )
    return vllm


PROMPTS = [
    "The cat sat on the mat. The cat sat on the mat. The cat sat on the mat. The cat",
    "Write a list of fruits: apple, banana, apple, banana, apple,",
    "Once upon a time, in a small village by the sea,",
    "The three most important things in programming are",
]

REPETITION = {"processors": [{"kind": "repetition_penalty", "repetition_penalty": 1.3}]}
