"""The plugin inside vLLM for real (offline ``LLM``, one engine for the module): decoders' processors against
vLLM's own sampling parameters, per-request isolation, DRY from the llama.cpp plugin, refusals.

Skipped where vLLM is not installed (the project's main environment); run with
``.venv-vllm/bin/python -m pytest plugins/decoders-vllm/tests``.
"""

from __future__ import annotations

import pytest
from vllm_setup import PROMPTS, REPETITION, require_vllm

vllm = require_vllm()

from vllm import LLM, SamplingParams
from vllm.exceptions import VLLMValidationError

pytestmark = pytest.mark.vllm
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def llm():
    from conftest import embedded_model_folder

    engine = LLM(model=embedded_model_folder(), enforce_eager=True, dtype="float32", max_model_len=512, seed=0)
    yield engine
    engine.llm_engine.engine_core.shutdown()  # free the engine's processes before the server's tests start


def token_ids(llm, prompts, params) -> list[list[int]]:
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [list(output.outputs[0].token_ids) for output in outputs]


def greedy(**extra) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.0, "max_tokens": MAX_TOKENS, **extra})


def test_repetition_penalty_equals_vllms(llm):
    """Both penalise every token of prompt + output: positive logits divided by the penalty, others multiplied
    (vLLM multiplies by 1/penalty: the same number up to the last bit; greedy picks agree)."""
    plain = token_ids(llm, PROMPTS, greedy())
    native = token_ids(llm, PROMPTS, greedy(repetition_penalty=1.3))
    plugin = token_ids(llm, PROMPTS, greedy(extra_args={"decoders": REPETITION}))
    assert plugin == native
    assert plugin != plain  # the penalty changed something: the plugin ran


def test_top_k_1_under_vllms_sampler_is_greedy(llm):
    top1 = {"processors": [{"kind": "top_k", "top_k": 1}], "selector": {"kind": "sample"}}
    expected = token_ids(llm, PROMPTS, greedy())
    sampled = [SamplingParams(temperature=1.0, seed=seed, max_tokens=MAX_TOKENS) for seed in range(len(PROMPTS))]
    plugin = [
        SamplingParams(temperature=1.0, seed=s, max_tokens=MAX_TOKENS, extra_args={"decoders": top1}) for s in range(4)
    ]
    assert token_ids(llm, PROMPTS, plugin) == expected
    assert token_ids(llm, PROMPTS, sampled) != expected  # without the plugin, temperature 1 samples otherwise


def repeats(prompt: list[int], output: list[int], n: int) -> list[tuple[int, ...]]:
    """The n-grams that end at a generated token and occurred earlier in prompt + output."""
    tokens, found = prompt + output, []
    for end in range(max(len(prompt), n - 1), len(tokens)):
        gram = tuple(tokens[end - n + 1 : end + 1])
        if any(tuple(tokens[i : i + n]) == gram for i in range(end - n + 1)):
            found.append(gram)
    return found


def test_no_repeat_ngram_never_repeats(llm):
    n = 3
    strategy = {"processors": [{"kind": "no_repeat_ngram", "no_repeat_ngram_size": n}]}
    plain = llm.generate(PROMPTS[:2], greedy(ignore_eos=True, max_tokens=48), use_tqdm=False)
    guarded = llm.generate(
        PROMPTS[:2], greedy(ignore_eos=True, max_tokens=48, extra_args={"decoders": strategy}), use_tqdm=False
    )
    for plain_out, out in zip(plain, guarded):
        tokens = list(out.outputs[0].token_ids)
        assert len(tokens) == 48
        assert repeats(list(out.prompt_token_ids), tokens, n) == [], out.outputs[0].text
        assert repeats(
            list(plain_out.prompt_token_ids), list(plain_out.outputs[0].token_ids), n
        )  # greedy alone repeats


def test_banned_tokens_never_appear(llm):
    plain = token_ids(llm, PROMPTS, greedy())
    banned = sorted({max(set(out), key=out.count) for out in plain})  # each prompt's most frequent token
    strategies = [
        {"processors": [{"kind": "bad_words", "bad_words_ids": [[token] for token in banned]}]},
        {"processors": [{"kind": "logit_bias", "logit_bias": {str(token): -100.0 for token in banned}}]},
    ]
    for strategy in strategies:
        outputs = token_ids(llm, PROMPTS, greedy(ignore_eos=True, extra_args={"decoders": strategy}))
        assert all(token not in out for out in outputs for token in banned), strategy
        assert all(len(out) == MAX_TOKENS for out in outputs)
    assert all(any(token in out for token in banned) for out in plain)


def test_mixed_batch_rows_equal_their_solo_runs(llm):
    """Plain requests (greedy, seeded sampling) beside opted-in ones give what they give alone; opted-in greedy
    rows too."""
    requests = [
        (PROMPTS[0], greedy()),
        (PROMPTS[1], SamplingParams(temperature=0.8, seed=7, max_tokens=MAX_TOKENS)),
        (PROMPTS[2], greedy(extra_args={"decoders": REPETITION})),
        (PROMPTS[3], SamplingParams(temperature=1.0, seed=3, max_tokens=MAX_TOKENS, extra_args={"decoders": "balanced"})),
        (PROMPTS[0], greedy(extra_args={"decoders": {"processors": [{"kind": "no_repeat_ngram", "no_repeat_ngram_size": 2}]}})),
        (PROMPTS[2], greedy()),
        (PROMPTS[1], SamplingParams(temperature=1.0, seed=11, max_tokens=MAX_TOKENS, extra_args={"decoders": "min_p"})),
    ]  # fmt: skip
    batch = token_ids(llm, [p for p, _ in requests], [s for _, s in requests])
    solo = [token_ids(llm, [prompt], params)[0] for prompt, params in requests]
    plain = [i for i, (_, params) in enumerate(requests) if not params.extra_args]
    opted_greedy = [i for i, (_, params) in enumerate(requests) if params.extra_args and params.temperature == 0]
    assert [batch[i] for i in plain] == [solo[i] for i in plain]
    assert [batch[i] for i in opted_greedy] == [solo[i] for i in opted_greedy]
    assert batch[4] != batch[0]  # the same prompt, opted in: changed


def test_dry_from_the_llamacpp_plugin_runs(llm):
    dry = {"processors": [{"kind": "dry", "dry_multiplier": 0.8, "dry_allowed_length": 2}]}
    plain = token_ids(llm, PROMPTS[:1], greedy(max_tokens=32))[0]
    out = token_ids(llm, PROMPTS[:1], greedy(max_tokens=32, extra_args={"decoders": dry}))[0]
    assert len(out) > 8, out  # a request whose chain failed would be ended at once (EOS)
    assert out != plain
    # sampling with the llama.cpp creative preset (DRY, min-p, XTC drawing from the request's seeded generator)
    creative = SamplingParams(
        temperature=1.0, seed=5, max_tokens=MAX_TOKENS, extra_args={"decoders": "llama_cpp_creative"}
    )
    first, again = token_ids(llm, PROMPTS[2:3], creative), token_ids(llm, PROMPTS[2:3], creative)
    assert first == again and len(first[0]) > 8


@pytest.mark.parametrize(
    "spec, temperature, words",
    [
        ({"processors": [{"kind": "top_p", "top_p": 1.5}], "selector": {"kind": "sample"}}, 1.0, "top_p"),
        (REPETITION, 0.7, "selector is 'greedy'"),
        ("beam_search", 0.0, "LLM.beam_search"),
    ],
)
def test_refused_strategy_before_it_runs(llm, spec, temperature, words):
    params = SamplingParams(temperature=temperature, max_tokens=4, extra_args={"decoders": spec})
    with pytest.raises(VLLMValidationError) as error:
        llm.generate(["Hello"], params, use_tqdm=False)
    assert "decoders:" in str(error.value) and words in str(error.value)
    assert len(token_ids(llm, ["Hello"], greedy(max_tokens=4))[0]) == 4  # the engine keeps serving
