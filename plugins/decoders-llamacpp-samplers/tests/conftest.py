"""Fixtures for the plugin's tests: a tiny random model, a toy tokenizer, and the hypothesis profiles."""

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.errors import InvalidArgument

try:  # run together with the host's tests, whose conftest already chose the profile
    settings.get_profile("ci")
except InvalidArgument:
    settings.register_profile(
        "ci", derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
    )
    settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


class ToyTokenizer:
    """One token per character of a small vocabulary; characters outside it tokenize to nothing."""

    vocab = ("a", "b", "c", "d", "e", "\n", ":", '"', "*", "x", "::")

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.index(ch) for ch in text if ch in self.vocab]

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)

    def __len__(self):
        return len(self.vocab)


@pytest.fixture
def toy_tokenizer():
    return ToyTokenizer()


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny random GPT-2-shaped model and its byte-level BPE tokenizer, built offline in about a second."""
    from llamacpp_tiny_model import make_model, make_tokenizer

    tokenizer = make_tokenizer()
    return make_model(len(tokenizer)), tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model):
    """The tiny model saved to a folder, for the command line."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    model, tokenizer = tiny_model
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def toy_tokenizer_for_hypothesis():
    """The toy tokenizer, session-scoped (hypothesis runs many examples per test function)."""
    return ToyTokenizer()
