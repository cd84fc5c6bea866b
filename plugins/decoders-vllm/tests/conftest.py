"""Fixtures for the plugin's tests: hypothesis profiles, a toy tokenizer, test-only processor kinds, a fake of vLLM's
persistent batch (tests that need vLLM itself are in test_vllm.py and skip without it)."""

import os

import pytest
from hypothesis import HealthCheck, settings

# hypothesis ships a "ci" profile of its own, so the profile is chosen here whatever is registered
settings.register_profile(
    "decoders-vllm-ci", derandomize=True, max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow], print_blob=True,
)  # fmt: skip
settings.register_profile(
    "decoders-vllm-dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "decoders-vllm-ci" if os.environ.get("CI") else "decoders-vllm-dev")
)


class ToyTokenizer:
    """One token per character of a 16-character vocabulary (what DRY's sequence breakers need)."""

    vocab = tuple("abcdefghij") + ("\n", ":", '"', "*", "x", "y")
    eos_token_id = 15

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.index(ch) for ch in text if ch in self.vocab]

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)

    def __len__(self):
        return len(self.vocab)


@pytest.fixture(scope="session")
def toy_tokenizer():
    return ToyTokenizer()


def embedded_model_folder() -> str:
    """The folder of the embedded SmolLM2-135M-Instruct, converted to safetensors (converted once when missing)."""
    import decoders
    from decoders.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    name = f"{gguf.stem}-{gguf.stat().st_size}"
    for entry in decoders.cache_entries():
        if entry.path.name == name and entry.status == "checksummed":
            return str(entry.path)
    return decoders.load_model().source.split(" (converted from")[0]
