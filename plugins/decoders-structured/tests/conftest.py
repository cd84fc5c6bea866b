"""Fixtures for the plugin's tests: a tiny random model with a byte-level BPE tokenizer, and the hypothesis profiles."""

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


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny random GPT-2-shaped model and its byte-level BPE tokenizer (EOS id 0), built offline in about a second."""
    from structured_tiny_model import make_model, make_tokenizer

    tokenizer = make_tokenizer()
    return make_model(len(tokenizer)), tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model):
    """The tiny model saved to a folder, for the command line."""
    folder = tmp_path_factory.mktemp("tiny-gpt2-structured")
    model, tokenizer = tiny_model
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
