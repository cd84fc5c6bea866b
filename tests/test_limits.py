"""Requests too large for the model or the memory are refused before any work, naming what fits."""

from __future__ import annotations

import pytest

import decoders
from decoders import GenerationError
from decoders.driver import LOGIT_COPIES, MEMORY_SHARE
from tests.tiny_models import ModelWrapper, make_model, make_tokenizer


class Counting(ModelWrapper):
    """A model wrapper that counts its forward passes."""

    def __init__(self, model):
        super().__init__(model)
        self.calls = 0

    def __call__(self, **kwargs):
        self.calls += 1
        return self.model(**kwargs)


@pytest.fixture
def counted():
    tokenizer = make_tokenizer()
    return Counting(make_model("gpt2", len(tokenizer))), tokenizer


def test_too_many_beams_for_the_memory_are_refused_naming_the_largest_that_fits(counted, monkeypatch):
    model, tokenizer = counted
    monkeypatch.setattr(decoders.driver, "available_memory", lambda: 64 * 2**20)  # 64 MiB free
    beams = {"search": {"kind": "beam", "num_beams": 10_000}}
    with pytest.raises(GenerationError, match=r"num_beams=10000: .* at most num_beams=(\d+) fits") as refused:
        decoders.generate("The cat", beams, model=counted, max_new_tokens=16)
    assert model.calls == 0  # refused before the model ran
    fits = int(refused.value.args[0].rsplit("num_beams=", 1)[1].split()[0])
    loaded = decoders.models.resolve_model(counted)
    columns = len(tokenizer("The cat")["input_ids"]) + 16
    per_row = columns * loaded.kv_bytes_per_token + LOGIT_COPIES * 4 * loaded.vocab_size
    assert fits * per_row <= MEMORY_SHARE * 64 * 2**20 < (fits + 1) * per_row  # the largest that fits
    result = decoders.generate("The cat", {"search": {"kind": "beam", "num_beams": 4}}, model=counted, max_new_tokens=4)
    assert len(result.generated_ids) > 0  # what fits runs


def test_too_many_tokens_for_the_memory_name_max_new_tokens(counted, monkeypatch):
    monkeypatch.setattr(decoders.driver, "available_memory", lambda: 2 * 2**20)
    with pytest.raises(GenerationError, match=r"max_new_tokens=100: .* lower max_new_tokens to \d+ or fewer|give fewer"):
        decoders.generate(["The cat"] * 200, "greedy", model=counted, max_new_tokens=100)
    assert counted[0].calls == 0


def test_engine_add_checks_the_memory_too(counted, monkeypatch):
    monkeypatch.setattr(decoders.driver, "available_memory", lambda: 64 * 2**20)
    engine = decoders.Engine(counted)
    with pytest.raises(GenerationError, match="at most n="):
        engine.add("The cat", {"selector": {"kind": "sample"}, "search": {"kind": "best_of", "n": 100_000}})
    assert engine.pending == 0


def test_logprobs_beyond_the_vocabulary_are_refused_with_its_size(counted):
    vocab = counted[0].get_output_embeddings().weight.shape[0]
    with pytest.raises(GenerationError, match=rf"logprobs=1000000 .* \({vocab} tokens\): use at most {vocab}"):
        decoders.generate("The cat", model=counted, logprobs=1_000_000)
    assert counted[0].calls == 0
    assert len(decoders.generate("The cat", model=counted, logprobs=vocab, max_new_tokens=1).logprobs[0].top) == vocab


def test_a_draft_model_with_another_tokenizer_is_refused_before_any_forward(counted):
    model, tokenizer = counted
    other = make_tokenizer(vocab_size=300)  # another tokenizer, trained to fewer tokens
    draft = Counting(make_model("gpt2", len(tokenizer)))  # same logit width as the target
    strategy = {"search": {"kind": "speculative", "assistant_model": (draft, other)}}
    with pytest.raises(GenerationError, match=r"tokenizer has \d+ tokens and the target's \d+, and they are not the same"):
        decoders.generate("Once", strategy, model=counted, max_new_tokens=4)
    wider = Counting(make_model("gpt2", len(tokenizer) + 64))
    strategy = {"search": {"kind": "speculative", "assistant_model": (wider, tokenizer)}}
    with pytest.raises(GenerationError, match=rf"vocabulary has {len(tokenizer) + 64} entries and the target's"):
        decoders.generate("Once", strategy, model=counted, max_new_tokens=4)
    assert model.calls == draft.calls == wider.calls == 0
