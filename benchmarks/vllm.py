"""vLLM's throughput with a decoders chain through the decoders-vllm plugin, against vLLM's own sampling parameters.

Both sides sample the same distribution shape on the same requests (16 prompts, 48 new tokens each, EOS ignored so
that both do the same work), on one offline ``LLM`` per dtype (``enforce_eager``):

* **plugin**: ``extra_args={"decoders": {"processors": [temperature 0.7, top_k 50, top_p 0.9], "selector": sample}}``
  with vLLM's temperature 1 (and its top-k/top-p off): the chain runs in the plugin, vLLM only samples;
* **native**: ``SamplingParams(temperature=0.7, top_k=50, top_p=0.9)``: vLLM's own sampler does it all;
* **bare** (for reference): ``SamplingParams(temperature=0.7)``, vLLM's cheapest sampling (no top-k/top-p), which the
  plugin side does too after the chain: plugin / bare is what the chain costs on top of vLLM's own work.

The sides take turns (the order rotates every repeat) after one warm-up run each; the median of each side's
repeats is compared. On CPU, vLLM's top-k/top-p sorts the whole vocabulary, which the plugin's chain does not
(top-k picks its candidates first), so "native" can be the slowest side. Before timing, a check that the plugin is
active: a +100 logit bias through it must decide every token.

    .venv-vllm/bin/python benchmarks/vllm.py                    # float32 and bfloat16, 5 repeats; writes results/vllm.json
    .venv-vllm/bin/python benchmarks/vllm.py --dtype float32 --repeats 3 --model FOLDER

Run it in the vLLM environment (``make setup-vllm``); the machine's load (``uptime``) is recorded before and after,
since other work on the cores moves the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# this file is named vllm.py: its folder must not shadow the vllm package (nor in the processes vLLM spawns)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; vLLM's default reserves most of the RAM
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

RESULTS = Path(__file__).parent / "results"
SIDES = ("plugin", "native", "bare")
PROMPTS = [
    "The history of the printing press begins",
    "Write a short poem about the sea.",
    "In a small village at the edge of the forest, there lived",
    "The main causes of the French Revolution were",
    "Explain how a rainbow forms.",
    "My favourite recipe for a rainy day is",
    "Once upon a time",
    "The three most important inventions of the twentieth century are",
    "A good way to learn a new language is",
    "The weather today is",
    "Dear diary, today I",
    "The recipe calls for three eggs,",
    "In the year 2050, cities will",
    "The best advice I ever got was",
    "Here is a summary of the meeting:",
    "The old lighthouse keeper",
]
BALANCED = {
    "processors": [
        {"kind": "temperature", "temperature": 0.7},
        {"kind": "top_k", "top_k": 50},
        {"kind": "top_p", "top_p": 0.9},
    ],
    "selector": {"kind": "sample"},
}


def embedded_model_folder() -> str:
    """The embedded SmolLM2-135M-Instruct's converted folder (decoders converts it once when missing)."""
    import decoders

    return decoders.load_model().source.split(" (converted from")[0]


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def side_params(side: str, tokens: int, seed: int):
    from vllm import SamplingParams

    if side == "plugin":
        make = lambda i: SamplingParams(
            temperature=1.0, top_k=0, top_p=1.0, seed=seed + i, max_tokens=tokens, ignore_eos=True,
            extra_args={"decoders": BALANCED},
        )  # fmt: skip
    elif side == "native":
        make = lambda i: SamplingParams(
            temperature=0.7, top_k=50, top_p=0.9, seed=seed + i, max_tokens=tokens, ignore_eos=True
        )
    else:
        make = lambda i: SamplingParams(temperature=0.7, seed=seed + i, max_tokens=tokens, ignore_eos=True)
    return [make(i) for i in range(len(PROMPTS))]


def timed(llm, params) -> tuple[float, int]:
    start = time.perf_counter()
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(o.outputs[0].token_ids) for o in outputs)


def check_plugin_active(llm) -> bool:
    """A +100 logit bias on one token through the plugin: vLLM, sampling at temperature 1, must give only that token.
    (Not ``top_k 1`` against greedy: decoders' top-k keeps ties, which bfloat16 logits have.)"""
    from vllm import SamplingParams

    forced = {"processors": [{"kind": "logit_bias", "logit_bias": {"42": 100.0}}], "selector": {"kind": "sample"}}
    params = SamplingParams(temperature=1.0, seed=1, max_tokens=8, ignore_eos=True, extra_args={"decoders": forced})
    outputs = llm.generate(PROMPTS[:4], params, use_tqdm=False)
    return all(list(o.outputs[0].token_ids) == [42] * 8 for o in outputs)


def run_dtype(model: str, dtype: str, repeats: int, tokens: int) -> dict:
    from vllm import LLM

    started = time.perf_counter()
    llm = LLM(model=model, enforce_eager=True, dtype=dtype, max_model_len=512, seed=0)
    startup = time.perf_counter() - started
    try:
        active = check_plugin_active(llm)
        if not active:
            raise SystemExit("the decoders plugin did not change vLLM's sampling: is decoders-vllm installed here?")
        for side in SIDES:  # warm-up
            timed(llm, side_params(side, tokens, 0))
        runs: dict[str, list[float]] = {side: [] for side in SIDES}
        for repeat in range(repeats):
            order = SIDES[repeat % len(SIDES) :] + SIDES[: repeat % len(SIDES)]
            for side in order:
                elapsed, count = timed(llm, side_params(side, tokens, 1000 * (repeat + 1)))
                runs[side].append(count / elapsed)
                print(f"  {dtype} repeat {repeat + 1}/{repeats} {side:6s}: {count / elapsed:7.1f} tokens/s", flush=True)
    finally:
        llm.llm_engine.engine_core.shutdown()
    plugin, native, bare = (statistics.median(runs[side]) for side in SIDES)
    return {
        "startup_s": round(startup, 1),
        "plugin_active": active,
        "tokens_per_s": {side: [round(v, 1) for v in values] for side, values in runs.items()},
        "median_tokens_per_s": {"plugin": round(plugin, 1), "native": round(native, 1), "bare": round(bare, 1)},
        "plugin_over_native": round(plugin / native, 3),
        "plugin_cost_percent": round(100 * (1 - plugin / native), 1),
        "plugin_over_bare": round(plugin / bare, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16"], help="repeatable (default: both)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side and dtype (default 5)")
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per request (default 48)")
    parser.add_argument("--out", type=Path, default=RESULTS / "vllm.json")
    args = parser.parse_args()

    from importlib import metadata

    import torch

    model = args.model or embedded_model_folder()
    before = load_average()
    print(f"load before: {before}", flush=True)
    results = {
        "model": args.model or "SmolLM2-135M-Instruct (embedded)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "versions": {d: metadata.version(d) for d in ("vllm-cpu", "transformers", "decoders-lab", "decoders-vllm")},
        "requests": len(PROMPTS),
        "new_tokens": args.tokens,
        "repeats": args.repeats,
        "plugin_strategy": BALANCED,
        "native": {"temperature": 0.7, "top_k": 50, "top_p": 0.9},
        "bare": {"temperature": 0.7},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "uptime_before": before,
        "dtypes": {},
    }
    for dtype in args.dtype or ["float32", "bfloat16"]:
        results["dtypes"][dtype] = run_dtype(model, dtype, args.repeats, args.tokens)
        summary = results["dtypes"][dtype]
        print(
            f"{dtype}: plugin {summary['median_tokens_per_s']['plugin']} vs native {summary['median_tokens_per_s']['native']} "
            f"(bare {summary['median_tokens_per_s']['bare']}) tokens/s: plugin/native {summary['plugin_over_native']}, "
            f"plugin/bare {summary['plugin_over_bare']}",
            flush=True,
        )
    results["uptime_after"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"load after: {results['uptime_after']}\nwrote {args.out}")


if __name__ == "__main__":
    main()
