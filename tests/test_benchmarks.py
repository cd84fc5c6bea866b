"""Smoke runs of the benchmark scripts at tiny sizes, so they keep working (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_sampling_benchmark_runs(tmp_path):
    output = tmp_path / "sampling.json"
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "sampling.py"), "--quick", "--logits", "synthetic", "zipf", "--output", str(output)],
        check=True, capture_output=True,
    )  # fmt: skip
    results = json.loads(output.read_text())["results"]
    assert {r["chain"] for r in results} == {"balanced", "top_p", "min_p", "typical_p", "greedy"}
    assert all(r["decoders_us"] > 0 and r["transformers_us"] > 0 and r["max_pass_us"] > 0 for r in results)


def test_generate_benchmark_runs(tmp_path, tiny_gpt2_dir):
    output = tmp_path / "generate.json"
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "generate.py"), "--quick", "--model", str(tiny_gpt2_dir), "--growth",
         "--output", str(output)],
        check=True, capture_output=True,
    )  # fmt: skip
    report = json.loads(output.read_text())
    results = report["results"]
    assert {(r["impl"], r["strategy"]) for r in results} == {
        (impl, strategy) for impl in ("decoders", "transformers") for strategy in ("greedy", "balanced")
    }
    assert all(r["tokens_per_s"] > 0 and r["new_tokens"] == 4 for r in results)
    ours, theirs = report["beam"]
    assert (ours["impl"], theirs["impl"], ours["strategy"]) == ("decoders", "transformers", "beam4")
    assert ours["identical_to_transformers"] is True
    assert [r["strategy"] for r in report["contrastive"]] == ["greedy", "contrastive"]
    assert report["contrastive"][1]["ratio_to_greedy"] > 0
    assert {row["task"] for row in report["speculative"]} == {"grounded", "open_ended"}
    [logprobs] = report["logprobs"]
    assert logprobs["same_tokens"] is True and len(logprobs["on_s"]) == len(logprobs["off_s"]) == 2
    [forward] = report["forward"]
    assert [row["batch"] for row in forward["rows"]] == [1, 2] and all(row["ms_per_step"] > 0 for row in forward["rows"])


def test_speculative_benchmark_runs(tmp_path, tiny_gpt2_dir):
    output = tmp_path / "speculative.json"
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "speculative.py"), "--quick", "--model", str(tiny_gpt2_dir), "--output", str(output)],
        check=True, capture_output=True,
    )  # fmt: skip
    rows = json.loads(output.read_text())["rows"]
    assert {row["task"] for row in rows} == {"grounded", "open_ended"}
    assert all(row["identical_tokens"] for row in rows)  # speculative, plain greedy and transformers agree
    assert all(row["speculative_vs_transformers_prompt_lookup"] > 0 for row in rows)


def test_device_check_runs_on_the_cpu():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "device_check.py"), "--quick"], capture_output=True, text=True
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pass" in result.stdout and "FAIL" not in result.stdout and " 0 failed" in result.stdout


def test_device_check_refuses_a_device_torch_cannot_use():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "device_check.py"), "--quick", "--device", "no-such-device"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "device 'no-such-device' is not available here" in result.stderr and "Traceback" not in result.stderr
