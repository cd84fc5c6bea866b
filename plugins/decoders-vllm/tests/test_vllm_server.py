"""The plugin behind vLLM's OpenAI-compatible server (one server for the module, on a free 127.0.0.1 port): a
strategy travels as JSON text in ``vllm_xargs`` (vLLM refuses nested objects there), a refused one is an HTTP 400."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from vllm_setup import PROMPTS, REPETITION, require_vllm

require_vllm()
openai = pytest.importorskip("openai", reason="the server tests use the openai client (pip install openai)")

pytestmark = pytest.mark.vllm
MODEL = "smollm2"
STARTUP_SECONDS = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from conftest import embedded_model_folder

    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", embedded_model_folder(),
        "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
        "--dtype", "float32", "--max-model-len", "512", "--seed", "0",
    ]  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if server.poll() is not None:
                pytest.fail(f"the vLLM server exited ({server.returncode}) while starting:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not start in {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and the engine processes it started
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def complete(client, prompt: str, **body) -> str:
    extra = {key: body.pop(key) for key in ("vllm_xargs", "repetition_penalty") if key in body}
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, extra_body=extra, **body)
    return response.choices[0].text


def test_strategy_as_json_text_equals_vllms_own_parameter(client):
    for prompt in PROMPTS[:2]:
        plugin = complete(client, prompt, temperature=0, vllm_xargs={"decoders": json.dumps(REPETITION)})
        native = complete(client, prompt, temperature=0, repetition_penalty=1.3)
        assert plugin == native
    assert plugin != complete(client, PROMPTS[1], temperature=0)


def test_preset_name(client):
    first = complete(client, PROMPTS[2], temperature=1.0, seed=4, vllm_xargs={"decoders": "balanced"})
    assert first and first == complete(client, PROMPTS[2], temperature=1.0, seed=4, vllm_xargs={"decoders": "balanced"})


@pytest.mark.parametrize(
    "xargs, temperature, words",
    [
        (
            {"decoders": json.dumps({"processors": [{"kind": "top_k", "top_k": 0}], "selector": {"kind": "sample"}})},
            1.0,
            "top_k",
        ),
        ({"decoders": json.dumps(REPETITION)}, 1.0, "selector is 'greedy'"),
        ({"decoders": "no-such-preset"}, 1.0, "is not a preset"),
    ],
)
def test_refused_strategy_is_a_400(client, xargs, temperature, words):
    with pytest.raises(openai.BadRequestError) as error:
        complete(client, "Hello", temperature=temperature, vllm_xargs=xargs)
    assert error.value.status_code == 400
    assert "decoders:" in str(error.value) and words in str(error.value)
    assert complete(client, "Hello", temperature=0)  # still serving
