"""Interop with transformers: a decoders chain inside ``model.generate``, and a model's own defaults."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessorList

import decoders
from decoders.hf import ChainLogitsProcessor, generation_config_to_strategy, strategy_to_logits_processor

PROMPTS = ["The quick brown fox jumps", "Once", "Decoding strategies choose"]
PENALISED_GREEDY = {
    "processors": [
        {"kind": "repetition_penalty", "repetition_penalty": 1.5},
        {"kind": "no_repeat_ngram", "no_repeat_ngram_size": 2},
    ],
    "selector": {"kind": "greedy"},
}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def hf_generate(model, tokenizer, prompts, max_new_tokens, **options):
    """``model.generate`` on the left-padded batch: each row's generated ids up to and including its first EOS."""
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **options)
    eos = model.generation_config.eos_token_id
    rows = output[:, inputs["input_ids"].shape[1] :].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["batch1", "ragged"])
def test_chain_inside_model_generate_matches_the_driver_and_transformers(tiny, prompts):
    model, tokenizer = tiny
    processor = strategy_to_logits_processor(PENALISED_GREEDY)
    inside_hf = hf_generate(
        model, tokenizer, prompts, 20, do_sample=False, logits_processor=LogitsProcessorList([processor])
    )
    driver = [r.generated_ids for r in decoders.generate(prompts, PENALISED_GREEDY, model=tiny, max_new_tokens=20)]
    transformers_own = hf_generate(
        model, tokenizer, prompts, 20, do_sample=False, repetition_penalty=1.5, no_repeat_ngram_size=2
    )
    assert inside_hf == driver == transformers_own
    plain = [r.generated_ids for r in decoders.generate(prompts, model=tiny, max_new_tokens=20)]
    assert driver != plain  # the chain did change the output


def test_stateful_context_is_reset_for_each_generate_call(tiny):
    """min_new_tokens needs the prompt length and EOS ids; a second call must not carry over the first's state."""
    model, tokenizer = tiny
    eos = model.generation_config.eos_token_id
    strategy = decoders.Strategy.model_validate(
        {
            "processors": [
                {"kind": "logit_bias", "logit_bias": {eos: 100.0}},
                {"kind": "min_new_tokens", "min_new_tokens": 3},
            ]
        }
    )
    processor = ChainLogitsProcessor(strategy.build(), eos_token_ids=(eos,))
    options = {"do_sample": False, "logits_processor": LogitsProcessorList([processor])}
    for prompts in (PROMPTS[:1], PROMPTS[1:]):
        rows = hf_generate(model, tokenizer, prompts, 10, **options)
        assert all(len(row) == 4 and row[-1] == eos and eos not in row[:3] for row in rows)
        assert [r.generated_ids for r in decoders.generate(prompts, strategy, model=tiny, max_new_tokens=10)] == rows


def test_selector_is_not_used_transformers_samples(tiny):
    model, tokenizer = tiny
    processor = strategy_to_logits_processor(
        {"processors": [{"kind": "top_k", "top_k": 1}], "selector": {"kind": "sample"}}
    )
    torch.manual_seed(0)
    sampled = hf_generate(
        model, tokenizer, PROMPTS, 8, do_sample=True, top_k=None, logits_processor=LogitsProcessorList([processor])
    )
    assert sampled == [r.generated_ids for r in decoders.generate(PROMPTS, model=tiny, max_new_tokens=8)]


def test_strategy_to_logits_processor_gives_dense_processed_scores():
    processor = strategy_to_logits_processor("top_k")  # top_k 5
    scores = processor(torch.zeros(2, 3, dtype=torch.long), torch.randn(2, 50))
    assert scores.shape == (2, 50) and torch.isfinite(scores).sum(dim=-1).tolist() == [5, 5]


def test_generation_config_to_strategy(tiny):
    model, _ = tiny
    assert generation_config_to_strategy(model).describe() == "greedy"
    sampling = type(
        "Model", (), {"generation_config": GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, top_k=20)}
    )
    assert generation_config_to_strategy(sampling).describe() == "temperature(0.6) → top_k(20) → top_p(0.9) → sample"


def test_repetition_penalty_skips_left_padding_like_transformers_generate(tiny):
    """In a ragged batch the pad (= EOS here) fills the short row's left; it is not text and is not penalised."""
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    prompts = ["The quick brown fox jumps over", "Once"]
    strategy = {
        "processors": [
            {"kind": "logit_bias", "logit_bias": {eos: 2.0}},
            {"kind": "repetition_penalty", "repetition_penalty": 5.0},
        ],
        "selector": {"kind": "greedy"},
    }
    ours = [r.generated_ids for r in decoders.generate(prompts, strategy, model=tiny, max_new_tokens=6)]
    theirs = hf_generate(
        model, tokenizer, prompts, 6, do_sample=False, repetition_penalty=5.0, sequence_bias={(eos,): 2.0}
    )
    assert ours == theirs


def test_chain_inside_beam_search_matches_transformers_own_processors(tiny):
    """Beam search reorders rows between calls: the chain follows them instead of restarting, which would forget
    how many tokens were generated and keep banning EOS. A frequent token is made an EOS id so that it matters."""
    model, tokenizer = tiny
    greedy = decoders.generate(PROMPTS, model=tiny, max_new_tokens=16)
    frequent = Counter(t for r in greedy for t in r.generated_ids).most_common(1)[0][0]
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    options = dict(
        do_sample=False, num_beams=4, num_return_sequences=2, max_new_tokens=16, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, frequent],
    )  # fmt: skip
    processor = strategy_to_logits_processor(
        {"processors": [{"kind": "min_new_tokens", "min_new_tokens": 8}]}, eos_token_ids=(tokenizer.eos_token_id, frequent)
    )
    inside_hf = model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), **options)
    transformers_own = model.generate(**inputs, min_new_tokens=8, **options)
    assert inside_hf.tolist() == transformers_own.tolist()
    assert (transformers_own[:, inputs["input_ids"].shape[1] + 8 :] == frequent).any()  # EOS came, after 8 tokens


def test_stateful_chain_inside_beam_search_matches_decoders_own_beam_search(tiny):
    """presence/frequency counts the generated tokens of each row's own history, which beams reorder."""
    model, tokenizer = tiny
    penalties = [{"kind": "presence_frequency", "presence_penalty": 0.8, "frequency_penalty": 0.6}]
    processor = strategy_to_logits_processor({"processors": penalties})
    inside_hf = hf_generate(
        model, tokenizer, PROMPTS, 16, do_sample=False, num_beams=4, num_return_sequences=2,
        logits_processor=LogitsProcessorList([processor]),
    )  # fmt: skip
    strategy = {"processors": penalties, "search": {"kind": "beam", "num_beams": 4, "num_return_sequences": 2}}
    ours = decoders.generate(PROMPTS, strategy, model=tiny, max_new_tokens=16)
    assert inside_hf == [h.generated_ids for r in ours for h in r.alternatives]
    plain = decoders.generate(PROMPTS, {"search": strategy["search"]}, model=tiny, max_new_tokens=16)
    assert [r.generated_ids for r in ours] != [r.generated_ids for r in plain]  # the penalty did change the beams
