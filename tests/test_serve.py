"""The OpenAI-compatible server: a real server on a free loopback port, driven by the official ``openai`` client.

Every seeded answer is checked against ``decoders.generate`` run alone with the strategy the request means, written
out here by hand (so a wrong mapping of a field fails); errors are checked by their JSON bodies.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import decoders
from decoders.serve import create_app, running
from decoders.serve.runner import Admission

MODEL = "tiny"
PROMPT = "Once upon a time there was"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SAMPLED = {
    "processors": [{"kind": "temperature", "temperature": 0.8}, {"kind": "top_p", "top_p": 0.9}],
    "selector": {"kind": "sample"},
}


@pytest.fixture(scope="module")
def model_dir(tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2 with a chat template (a copy: the shared fixture's folder stays as it is)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-chat") / "model"
    shutil.copytree(tiny_gpt2_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return decoders.load_model(str(model_dir))


@pytest.fixture(scope="module")
def served(model_dir):
    """(base URL, Server) of a server on the tiny model, 8 rows, 32 waiting at most."""
    app = create_app(str(model_dir), model_name=MODEL, max_rows=8, queue=32)
    with running(app) as url:
        yield url, app.state.server


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def solo(loaded, prompt, strategy, **options):
    return decoders.generate(prompt, strategy, model=loaded, **options)[0]


def call(url, path, body=None, headers=None, method=None):
    """(status, parsed JSON or text) of a raw HTTP request (bodies the openai client would not send)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def metric(url, name):
    _, text = call(url, "/metrics")
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{"))]
    return sum(values)


def error_of(exc_info):
    return exc_info.value.body


# ---- endpoints ---------------------------------------------------------------------------------------------------


def test_models_health_and_metrics(served, client):
    url, _ = served
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert call(url, "/health") == (200, {"status": "ok"})
    status, text = call(url, "/metrics")
    assert status == 200
    for name in (
        "decoders_requests_total",
        "decoders_generation_tokens_total",
        "decoders_live_rows",
        "decoders_queued_requests",
    ):
        assert f"# TYPE {name} " in text
    assert "decoders_max_rows 8" in text


# ---- parameters --------------------------------------------------------------------------------------------------


def test_seeded_sampling_equals_generate_and_usage_counts_tokens(client, loaded):
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0.8, top_p=0.9, seed=3)
    expected = solo(loaded, PROMPT, SAMPLED, seed=3, max_new_tokens=10)
    [choice] = reply.choices
    assert choice.text == expected.text
    assert choice.finish_reason == "length"
    assert reply.usage.prompt_tokens == len(expected.prompt_ids)
    assert reply.usage.completion_tokens == len(expected.generated_ids) == 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 10
    other = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0.8, top_p=0.9, seed=4)
    assert other.choices[0].text == solo(loaded, PROMPT, SAMPLED, seed=4, max_new_tokens=10).text != choice.text


def test_temperature_zero_is_greedy_and_no_temperature_samples_at_one(client, loaded):
    greedy = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, seed=1)
    assert greedy.choices[0].text == solo(loaded, PROMPT, "greedy", max_new_tokens=8).text
    default = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, seed=5)  # OpenAI's default: T = 1
    assert default.choices[0].text == solo(loaded, PROMPT, "pure_sampling", seed=5, max_new_tokens=8).text
    assert default.choices[0].text != greedy.choices[0].text
    echoed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + greedy.choices[0].text


def test_processor_fields_become_the_strategy_in_vllm_order(client, loaded):
    reply = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, seed=9, temperature=1.3, top_p=0.95, presence_penalty=0.5,
        frequency_penalty=0.3, logit_bias={"17": 2.0, "40": -100},
        extra_body={"top_k": 30, "min_p": 0.02, "typical_p": 0.97, "repetition_penalty": 1.2, "min_tokens": 2},
    )  # fmt: skip
    strategy = {
        "processors": [
            {"kind": "min_new_tokens", "min_new_tokens": 2},
            {"kind": "logit_bias", "logit_bias": {17: 2.0, 40: -100.0}},
            {"kind": "presence_frequency", "presence_penalty": 0.5, "frequency_penalty": 0.3},
            {"kind": "repetition_penalty", "repetition_penalty": 1.2},
            {"kind": "temperature", "temperature": 1.3},
            {"kind": "top_k", "top_k": 30},
            {"kind": "top_p", "top_p": 0.95},
            {"kind": "min_p", "min_p": 0.02},
            {"kind": "typical_p", "typical_p": 0.97},
        ],
        "selector": {"kind": "sample"},
    }
    assert reply.choices[0].text == solo(loaded, PROMPT, strategy, seed=9, max_new_tokens=12).text
    from decoders.serve.mapping import request_strategy
    from decoders.serve.schemas import CompletionRequest

    body = CompletionRequest.model_validate({
        "prompt": PROMPT, "temperature": 1.3, "top_p": 0.95, "presence_penalty": 0.5, "frequency_penalty": 0.3,
        "logit_bias": {"17": 2.0, "40": -100}, "top_k": 30, "min_p": 0.02, "typical_p": 0.97, "repetition_penalty": 1.2,
        "min_tokens": 2,
    })  # fmt: skip
    assert request_strategy(body) == decoders.Strategy.model_validate(strategy)  # the order too
    # neutral values (what some clients always send) add nothing: the same as no field at all
    neutral = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=8, seed=2, temperature=1, top_p=1, presence_penalty=0, frequency_penalty=0,
        extra_body={"top_k": -1, "min_p": 0, "repetition_penalty": 1},
    )  # fmt: skip
    assert neutral.choices[0].text == solo(loaded, PROMPT, "pure_sampling", seed=2, max_new_tokens=8).text


def test_logit_bias_forces_a_token(client, loaded):
    token = loaded.tokenizer(" the")["input_ids"][0]
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, seed=0, logit_bias={str(token): 100})
    assert reply.choices[0].text == loaded.tokenizer.decode([token] * 4)


def test_stop_strings_eos_ignore_eos_and_min_tokens(client, loaded):
    greedy = solo(loaded, PROMPT, "greedy", max_new_tokens=12).text
    stop = greedy[4:6]
    reply = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop, "never seen"]
    )
    assert reply.choices[0].text == greedy[: greedy.index(stop)]
    assert reply.choices[0].finish_reason == "stop"
    eos = str(loaded.eos_token_ids[0])
    ended = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logit_bias={eos: 100})
    assert (ended.choices[0].text, ended.choices[0].finish_reason, ended.usage.completion_tokens) == ("", "stop", 1)
    kept = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logit_bias={eos: 100},
                                     extra_body={"ignore_eos": True})  # fmt: skip
    assert (kept.choices[0].finish_reason, kept.usage.completion_tokens) == ("length", 6)
    late = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logit_bias={eos: 100},
                                     extra_body={"min_tokens": 3})  # fmt: skip
    assert (late.choices[0].finish_reason, late.usage.completion_tokens) == ("stop", 4)


def test_chat_uses_the_chat_template(client, loaded):
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_completion_tokens=9, seed=4,
        temperature=0.8, top_p=0.9,
    )  # fmt: skip
    expected = solo(loaded, "Tell me a story", SAMPLED, seed=4, max_new_tokens=9, chat=True)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == len(expected.prompt_ids)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Go on"},
    ]
    turns = client.chat.completions.create(model=MODEL, messages=conversation, max_tokens=5, temperature=0)
    rendered = loaded.tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else "Hi"} for m in conversation],
        tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    ids = loaded.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert turns.usage.prompt_tokens == len(ids)
    assert (
        loaded.tokenizer(rendered)["input_ids"] == ids
    )  # this tokenizer adds no special tokens: generate can check it
    assert turns.choices[0].message.content == solo(loaded, rendered, "greedy", max_new_tokens=5).text


def test_chat_default_max_tokens_is_the_room_left_in_the_context(client, loaded):
    eos = str(loaded.eos_token_ids[0])
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], temperature=0,
                                           logit_bias={eos: -100})  # fmt: skip
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.total_tokens == loaded.context_length


# ---- streams -----------------------------------------------------------------------------------------------------


def test_streamed_chunks_add_up_to_the_text(client):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0.8, top_p=0.9, seed=6)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0.8, top_p=0.9,
                                            seed=6, stream=True))  # fmt: skip
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.usage is None for c in chunks)


def test_chat_stream_with_usage(client):
    messages = [{"role": "user", "content": "Hello there"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, seed=8)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, seed=8, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    *body, last = chunks
    assert last.choices == [] and last.usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in body)
    assert body[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in body) == whole.choices[0].message.content
    assert body[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_n_samples_use_seed_plus_i_streamed_or_not(client, loaded):
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, n=3, seed=7, temperature=0.8, top_p=0.9)
    texts = [c.text for c in sorted(reply.choices, key=lambda c: c.index)]
    assert texts == [solo(loaded, PROMPT, SAMPLED, seed=7 + i, max_new_tokens=8).text for i in range(3)]
    assert reply.usage.completion_tokens == 24
    streamed = {0: "", 1: "", 2: ""}
    for chunk in client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, n=3, seed=7, temperature=0.8,
                                           top_p=0.9, stream=True):  # fmt: skip
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert [streamed[i] for i in range(3)] == texts
    batch = client.completions.create(model=MODEL, prompt=[PROMPT, "The cat"], max_tokens=5, n=2, seed=1, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[2].text == solo(loaded, "The cat", "greedy", max_new_tokens=5).text


def test_logprobs_completions_and_chat(client, loaded):
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    expected = solo(loaded, PROMPT, "greedy", max_new_tokens=6, logprobs=3)
    logprobs = reply.choices[0].logprobs
    assert logprobs.token_logprobs == pytest.approx([step.chosen.raw for step in expected.logprobs], abs=1e-5)
    assert logprobs.tokens == [step.chosen.token for step in expected.logprobs]
    for top, step in zip(logprobs.top_logprobs, expected.logprobs, strict=True):
        assert top == pytest.approx({t.token: t.raw for t in step.top}, abs=1e-5) and 1 <= len(top) <= 3
    assert all(
        max(top.values()) >= chosen - 1e-6 for top, chosen in zip(logprobs.top_logprobs, logprobs.token_logprobs)
    )
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                          temperature=0, logprobs=True, top_logprobs=2)  # fmt: skip
    expected = solo(loaded, "Hi", "greedy", max_new_tokens=5, logprobs=2, chat=True)
    content = chat.choices[0].logprobs.content
    assert len(content) == len(expected.logprobs) - (expected.finish_reason == "eos")  # a closing EOS is not shown
    assert [entry.logprob for entry in content] == pytest.approx(
        [step.chosen.raw for step in expected.logprobs[: len(content)]], abs=1e-5
    )
    assert all(len(entry.top_logprobs) == 2 for entry in content)
    assert content[0].bytes == list(content[0].token.encode())
    streamed = [c for c in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                max_tokens=5, temperature=0, logprobs=True, top_logprobs=2, stream=True) if c.choices and c.choices[0].logprobs]  # fmt: skip
    assert [e.logprob for c in streamed for e in c.choices[0].logprobs.content] == [e.logprob for e in content]
    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert plain.choices[0].logprobs is None


def test_response_format_json_schema_and_json_object(client):
    if "json_schema" not in decoders.get_registry().processors:
        pytest.skip("the structured-output plugin (decoders-structured) is not installed")
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
              "additionalProperties": False}  # fmt: skip
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Yes or no?"}], max_tokens=30, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert reply.choices[0].finish_reason == "stop"
    assert json.loads(reply.choices[0].message.content)["answer"] in ("yes", "no")
    anything = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, seed=1,
                                         extra_body={"response_format": {"type": "json_object"}})  # fmt: skip
    assert anything.choices[0].text.startswith("{")
    with pytest.raises(openai.BadRequestError) as refused:  # an invalid schema: the plugin's message, naming the field
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                       response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "intger"}}})  # fmt: skip
    assert error_of(refused)["param"] == "response_format" and "intger" in error_of(refused)["message"]


def test_response_format_without_the_plugin_is_a_clear_400(monkeypatch):
    from types import SimpleNamespace

    from decoders.serve import mapping
    from decoders.serve.schemas import ApiError, CompletionRequest

    monkeypatch.setattr(mapping, "get_registry", lambda: SimpleNamespace(processors={}, presets={}))
    body = CompletionRequest.model_validate({"prompt": "x", "response_format": {"type": "json_object"}})
    with pytest.raises(ApiError) as refused:
        mapping.request_strategy(body)
    assert refused.value.status == 400 and refused.value.param == "response_format"
    assert "pip install decoders-structured" in refused.value.message


# ---- strategy ----------------------------------------------------------------------------------------------------


def test_strategy_as_preset_dict_and_json_text(client, loaded):
    preset = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=8, seed=2, extra_body={"strategy": "top_k"}
    )
    assert preset.choices[0].text == solo(loaded, PROMPT, "top_k", seed=2, max_new_tokens=8).text
    as_dict = {
        "processors": [{"kind": "min_p", "min_p": 0.1}, {"kind": "temperature", "temperature": 1.5}],
        "selector": {"kind": "sample"},
    }
    reply = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=8, seed=2, extra_body={"strategy": as_dict}
    )
    assert reply.choices[0].text == solo(loaded, PROMPT, as_dict, seed=2, max_new_tokens=8).text
    as_text = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=8, seed=2, extra_body={"strategy": json.dumps(as_dict)}
    )
    assert as_text.choices[0].text == reply.choices[0].text
    # neutral OpenAI defaults beside a strategy do not conflict; best_of combines with it as the CLI's --n does
    combined = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, seed=2, temperature=1, best_of=3, n=2,
                                         extra_body={"strategy": "top_k"})  # fmt: skip
    best_of = {**decoders.PRESETS["top_k"], "search": {"kind": "best_of", "n": 3}}
    expected = solo(loaded, PROMPT, best_of, seed=2, max_new_tokens=6)
    assert [c.text for c in combined.choices] == [h.text for h in expected.alternatives[:2]]


def test_beam_strategy_returns_n_ranked_hypotheses(client, loaded):
    reply = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=6, n=3, extra_body={"strategy": "beam_search"}
    )
    expected = solo(
        loaded, PROMPT, {"search": {"kind": "beam", "num_beams": 4, "num_return_sequences": 3}}, max_new_tokens=6
    )
    assert [c.text for c in reply.choices] == [h.text for h in expected.alternatives] and len(reply.choices) == 3
    assert [c.index for c in reply.choices] == [0, 1, 2]
    streamed = {}
    for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, n=2,
                                                stream=True, extra_body={"strategy": "beam_search"}):  # fmt: skip
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    expected = solo(
        loaded,
        "Hi",
        {"search": {"kind": "beam", "num_beams": 4, "num_return_sequences": 2}},
        max_new_tokens=6,
        chat=True,
    )
    assert [streamed[0], streamed[1]] == [h.text for h in expected.alternatives]


def test_speculative_prompt_lookup_and_best_of(client, loaded):
    lookup = {"search": {"kind": "speculative", "prompt_lookup_num_tokens": 3}}
    prompt = "the cat sat on the mat and the cat sat on the"
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, extra_body={"strategy": lookup})
    assert reply.choices[0].text == solo(loaded, prompt, lookup, max_new_tokens=10).text
    best = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, seed=4, best_of=4, n=2, temperature=0.9)
    expected = solo(loaded, PROMPT, {"processors": [{"kind": "temperature", "temperature": 0.9}], "selector": {"kind": "sample"},
                                     "search": {"kind": "best_of", "n": 4}}, seed=4, max_new_tokens=6)  # fmt: skip
    assert [c.text for c in best.choices] == [h.text for h in expected.alternatives[:2]]


# ---- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"top_p": 1.5}, "top_p", ["top_p", "less than or equal to 1"]),
        ({"temperature": 0.7, "extra_body": {"strategy": "greedy"}}, "temperature", ["strategy", "temperature"]),
        ({"temperature": 0, "extra_body": {"strategy": "top_p"}}, "temperature", ["strategy", "temperature"]),
        ({"extra_body": {"strategy": "nucleus"}}, "strategy", ["not a preset", "top_p"]),
        ({"extra_body": {"strategy": "/etc/hostname"}}, "strategy", ["reads no strategy files"]),
        ({"extra_body": {"strategy": {"processors": [{"kind": "top_k", "top_k": 0}]}}}, "strategy", ["top_k"]),
        (
            {"extra_body": {"strategy": {"search": {"kind": "speculative", "assistant_model": "gpt2"}}}},
            "strategy",
            ["draft model"],
        ),
        ({"n": 5, "extra_body": {"strategy": "beam_search"}}, "n", ["num_beams"]),
        ({"n": 3, "best_of": 2}, "n", ["best_of"]),
        ({"best_of": 2, "temperature": 0}, "best_of", ["temperature 0"]),
        ({"extra_body": {"top_k": 0.5}}, "top_k", ["integer"]),
        ({"logit_bias": {"cat": 1}}, "logit_bias", ["token id"]),
        ({"seed": -1}, "seed", ["greater than or equal to 0"]),
        ({"max_tokens": 500}, "max_tokens", ["context length", "max_tokens"]),
        ({"stop": ["x"], "extra_body": {"strategy": "beam_search"}}, None, ["stop"]),
        ({"extra_body": {"temprature": 0.5}}, "temprature", ["unrecognized"]),
        ({"suffix": "end"}, "suffix", ["not supported"]),
    ],
)
def test_bad_values_are_400_naming_the_field(client, fields, param, words):
    fields = {"max_tokens": 4, **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt=PROMPT, **fields)
    error = error_of(refused)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert all(word in error["message"] for word in words), error["message"]
    assert "Traceback" not in error["message"]


def test_malformed_bodies_unknown_models_and_routes(served, client):
    url, _ = served
    status, body = call(url, "/v1/completions", b'{"model": "tiny", "prompt": ')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = call(url, "/v1/completions", b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]["message"]
    status, body = call(url, "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": "5"})
    assert status == 400 and body["error"]["param"] == "max_tokens"
    status, body = call(url, "/v1/chat/completions", {"model": MODEL})
    assert status == 400 and body["error"]["param"] == "messages" and "required" in body["error"]["message"]
    status, body = call(
        url, "/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
    )
    assert status == 400 and body["error"]["param"] == "messages.0.content"
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-4o", prompt=PROMPT, max_tokens=2)
    assert error_of(missing)["code"] == "model_not_found" and error_of(missing)["param"] == "model"
    status, body = call(url, "/v2/anything")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = call(url, "/v1/completions", method="GET")
    assert status == 405 and "error" in body
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                       tools=[{"type": "function", "function": {"name": "f"}}])  # fmt: skip
    assert error_of(tools)["param"] == "tools"
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2).choices[0].finish_reason  # still serving


def test_an_internal_failure_is_a_500_without_internals_and_the_server_goes_on(served, client, monkeypatch):
    _, server = served

    async def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(server.runner, "open", broken)
    with pytest.raises(openai.InternalServerError) as failed:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    assert error_of(failed)["type"] == "server_error" and "secret" not in error_of(failed)["message"]
    monkeypatch.undo()
    assert server.admission.running == 0  # its admission was given back
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2).choices[0].text is not None


def test_an_engine_that_stops_answers_503_and_health_says_so(loaded):
    app = create_app(loaded, model_name=MODEL, max_rows=2)
    server = app.state.server

    def broken_step():
        raise RuntimeError("the engine broke")

    with running(app) as url:
        server.engine.step = broken_step
        status, body = call(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3})
        assert status == 503 and body["error"]["code"] == "engine_stopped"
        assert "RuntimeError" in body["error"]["message"] and "the engine broke" not in body["error"]["message"]
        assert call(url, "/health") == (503, {"status": "stopped"})
        status, body = call(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3})
        assert status == 503 and "restart the server" in body["error"]["message"]


# ---- concurrency -------------------------------------------------------------------------------------------------


def _wait_until(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _open_stream(url, body):
    """A raw streaming request: the connection and its response, after the first two data lines."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    lines = 0
    while lines < 2:
        lines += response.readline().startswith(b"data: ")
    return connection, response


def test_a_client_that_disconnects_aborts_its_request_and_frees_its_rows(served):
    url, server = served
    aborted = metric(url, "decoders_aborted_requests_total")
    long = {"model": MODEL, "prompt": PROMPT, "max_tokens": 110, "ignore_eos": True, "seed": 1, "stream": True}
    connection, _ = _open_stream(url, long)
    assert server.engine.live_rows == 1
    connection.close()  # the client is gone after two tokens of 110
    _wait_until(lambda: metric(url, "decoders_aborted_requests_total") == aborted + 1)
    _wait_until(lambda: metric(url, "decoders_live_rows") == 0 and server.admission.running == 0)
    # a client of a non-streaming request that gives up: the same
    parts = urlsplit(url)
    waiting = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    waiting.request(
        "POST", "/v1/completions", json.dumps({**long, "stream": False}), {"Content-Type": "application/json"}
    )
    _wait_until(lambda: server.engine.live_rows == 1)
    waiting.close()
    _wait_until(lambda: metric(url, "decoders_aborted_requests_total") == aborted + 2)
    _wait_until(lambda: server.engine.live_rows == 0 and server.engine.pending == 0)


def test_a_full_queue_answers_429_or_waits(served, client):
    url, server = served
    original = server.admission
    try:
        server.admission = Admission(max_rows=1, queue=0, policy="reject")
        long = {"model": MODEL, "prompt": PROMPT, "max_tokens": 110, "ignore_eos": True, "seed": 1, "stream": True}
        connection, response = _open_stream(url, long)
        with pytest.raises(openai.RateLimitError) as busy:
            client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
        assert error_of(busy)["code"] == "queue_full"
        assert metric(url, "decoders_rejected_requests_total") >= 1
        response.read()  # the first request runs to its end
        connection.close()
        server.admission = Admission(max_rows=1, queue=0, policy="wait")
        connection, response = _open_stream(url, long)
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(client.completions.create, model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0)
            _wait_until(lambda: server.admission.held == 1)
            assert not held.done()
            response.read()
            connection.close()
            assert held.result(timeout=30).usage.completion_tokens == 3
    finally:
        server.admission = original


def test_sixteen_concurrent_clients_with_mixed_parameters(served, client, loaded):
    engine, most_rows, done = served[1].engine, [0], threading.Event()

    def watch():  # the most rows in use at once: requests shared the batch
        while not done.is_set():
            most_rows[0] = max(most_rows[0], engine.live_rows)
            time.sleep(0.001)

    def ask(index):
        seed = 100 + index
        if index % 4 == 0:
            reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6 + index % 5, temperature=0.8,
                                              top_p=0.9, seed=seed)  # fmt: skip
            return "sampled", index, reply.choices[0].text
        if index % 4 == 1:
            chunks = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Story {index}"}],
                                                    max_tokens=7, temperature=0.8, top_p=0.9, seed=seed, stream=True)  # fmt: skip
            return "chat", index, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        if index % 4 == 2:
            reply = client.completions.create(model=MODEL, prompt=f"{PROMPT} {index}", max_tokens=5,
                                              extra_body={"strategy": "beam_search"}, n=2)  # fmt: skip
            return "beam", index, [c.text for c in reply.choices]
        chunks = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, seed=seed, stream=True,
                                           extra_body={"strategy": "min_p", "repetition_penalty": None})  # fmt: skip
        return "min_p", index, "".join(c.choices[0].text for c in chunks)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(16)))
    finally:
        done.set()
        watcher.join()
    assert len(answers) == 16
    assert most_rows[0] >= 4  # several requests (and beams) in the batch at once
    _wait_until(
        lambda: engine.records == 0
    )  # the engine keeps no finished request: a long-running server does not grow
    for kind, index, text in answers:
        seed = 100 + index
        if kind == "sampled":
            assert text == solo(loaded, PROMPT, SAMPLED, seed=seed, max_new_tokens=6 + index % 5).text
        elif kind == "chat":
            assert text == solo(loaded, f"Story {index}", SAMPLED, seed=seed, max_new_tokens=7, chat=True).text
        elif kind == "beam":
            beam = {"search": {"kind": "beam", "num_beams": 4, "num_return_sequences": 2}}
            assert text == [h.text for h in solo(loaded, f"{PROMPT} {index}", beam, max_new_tokens=5).alternatives]
        else:
            assert text == solo(loaded, PROMPT, "min_p", seed=seed, max_new_tokens=8).text


def test_admission_mirrors_the_engine_queue():
    import asyncio

    async def scenario():
        admission = Admission(max_rows=4, queue=2, policy="reject")
        first = await admission.enter([4])  # a beam search of 4 rows
        small = await admission.enter([1, 1])  # they wait
        assert (admission.running, admission.waiting) == (1, 2)
        with pytest.raises(Exception, match="busy"):
            await admission.enter([1])
        admission.leave(first[0])
        assert (admission.running, admission.waiting) == (2, 0)
        with pytest.raises(Exception, match="takes 5 rows"):
            await admission.enter([5])
        for ticket in small:
            admission.leave(ticket)
        assert (admission.running, admission.waiting) == (0, 0)

    asyncio.run(scenario())


# ---- the command -------------------------------------------------------------------------------------------------


#: the `decoders` command, as its console script runs it
DECODERS = [sys.executable, "-c", "from decoders.cli import main; main()"]


def test_the_serve_command_starts_a_server_that_checks_the_api_key(model_dir):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [*DECODERS, "serve", "--model", str(model_dir), "--port", str(port), "--api-key", "k3y",
               "--max-rows", "4", "--served-model-name", MODEL, "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if call(url, "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 3}
        status, error = call(url, "/v1/completions", body)
        assert status == 401 and error["error"]["code"] == "invalid_api_key" and "missing" in error["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).completions.create(**body)
        reply = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0).completions.create(**body)
        assert reply.usage.completion_tokens == 3
        assert call(url, "/metrics")[1].count("decoders_max_rows 4") == 1
    finally:
        process.terminate()
        process.wait(timeout=30)
    bad = subprocess.run([*DECODERS, "serve", "--dtype", "float16"], check=False, capture_output=True, text=True)
    assert bad.returncode == 2 and "float32 or bfloat16" in bad.stderr


def test_the_serving_benchmark_runs_against_a_running_server(served, tmp_path):
    from pathlib import Path

    output = tmp_path / "serve.json"
    benchmark = Path(__file__).parent.parent / "benchmarks" / "serve.py"
    subprocess.run([sys.executable, str(benchmark), "--url", served[0], "--model-name", MODEL, "--quick", "--output",
                    str(output)], check=True, capture_output=True)  # fmt: skip
    [result] = json.loads(output.read_text())["results"]
    assert [level["clients"] for level in result["levels"]] == [1, 4]
    for level in result["levels"]:
        assert level["errors"] == 0 and level["output_tokens"] > 0 and level["ttft_ms_p50"] > 0
