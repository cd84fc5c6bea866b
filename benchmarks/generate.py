"""Tokens/s and peak memory of decoders vs transformers' ``model.generate``, same model, same strategy.

Each measurement runs in a fresh process (so peak memory is its own): load the model, warm up, then time
``decoders.generate`` or ``model.generate`` over a batch of prompts for N new tokens with EOS ignored (every row
runs all N steps in both). Peak memory is the process's peak resident size while generating minus its size just before (Linux).

    python benchmarks/generate.py                  # batch 1 and 16, greedy and balanced, 64 tokens, + growth
    python benchmarks/generate.py --quick          # a smoke run on a tiny model folder (see --model)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
STRATEGIES = {
    "greedy": {"do_sample": False},
    "balanced": {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9},
}
PROMPTS = [
    "The history of the Roman Empire",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived",
    "To make a good cup of coffee,",
    "Artificial intelligence is transforming",
    "Q: What is the capital of France?\nA:",
    "Shopping list: eggs, milk,",
    "The theorem states that for every prime p",
]


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> float:
    """Reset the process's peak resident size to its current size (Linux) and return that size in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def worker(impl: str, batch: int, strategy: str, new_tokens: int, repeat: int, model_name: str | None) -> dict:
    """Time one configuration in this process and return its numbers."""
    import torch

    import decoders

    loaded = decoders.load_model(model_name)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    if impl == "decoders":
        chain = decoders.Strategy.from_generation_config(STRATEGIES[strategy])

        def run(tokens: int) -> None:
            decoders.generate(prompts, chain, model=loaded, max_new_tokens=tokens, seed=0, ignore_eos=True)
    else:
        tokenizer = loaded.tokenizer
        tokenizer.padding_side = "left"
        inputs = tokenizer(prompts, return_tensors="pt", padding=True)
        config = loaded.model.generation_config
        config.eos_token_id = None  # run every row for all steps, as decoders does with ignore_eos

        def run(tokens: int) -> None:
            with torch.inference_mode():
                loaded.model.generate(
                    **inputs, max_new_tokens=tokens, min_new_tokens=None, pad_token_id=tokenizer.pad_token_id,
                    generation_config=config, **STRATEGIES[strategy],
                )  # fmt: skip

    run(4)  # warm up
    before = reset_peak_rss()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(new_tokens)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"impl": impl, "batch": batch, "strategy": strategy, "new_tokens": new_tokens, "seconds": seconds,
            "tokens_per_s": batch * new_tokens / seconds, "ms_per_step": seconds / new_tokens * 1e3,
            "peak_extra_mb": _status_mb("VmHWM") - before, "peak_rss_mb": _status_mb("VmHWM")}  # fmt: skip


def measure(impl: str, batch: int, strategy: str, new_tokens: int, repeat: int, model_name: str | None) -> dict:
    """Run :func:`worker` in a fresh Python process and return its numbers."""
    command = [sys.executable, __file__, "--worker", impl, str(batch), strategy, str(new_tokens), str(repeat)]
    if model_name:
        command += ["--model", model_name]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=5, metavar=("IMPL", "BATCH", "STRATEGY", "TOKENS", "REPEAT"), help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help="model name or folder (default: the embedded SmolLM2)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--growth", type=int, nargs="*", default=[32, 64, 128, 256, 512], help="lengths for the growth curve")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2, 4 tokens, growth 4 and 8")
    parser.add_argument("--output", type=Path, default=RESULTS / "generate.json")
    args = parser.parse_args()
    if args.worker:
        impl, batch, strategy, tokens, repeat = args.worker
        print(json.dumps(worker(impl, int(batch), strategy, int(tokens), int(repeat), args.model)))
        return
    if args.quick:
        args.batch, args.new_tokens, args.growth, args.repeat = [2], 4, [4, 8], 1

    from rich.console import Console
    from rich.table import Table

    rows = []
    table = Table(title=f"tokens/s, {args.new_tokens} new tokens, EOS ignored (median of {args.repeat})")
    for column in ("batch", "strategy", "decoders tok/s", "transformers tok/s", "ratio", "decoders peak MB", "transformers peak MB"):
        table.add_column(column, justify="right")
    for batch in args.batch:
        for strategy in STRATEGIES:
            ours = measure("decoders", batch, strategy, args.new_tokens, args.repeat, args.model)
            theirs = measure("transformers", batch, strategy, args.new_tokens, args.repeat, args.model)
            rows += [ours, theirs]
            table.add_row(str(batch), strategy, f"{ours['tokens_per_s']:.1f}", f"{theirs['tokens_per_s']:.1f}",
                          f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}", f"{ours['peak_extra_mb']:.0f}",
                          f"{theirs['peak_extra_mb']:.0f}")  # fmt: skip
    growth = []
    growth_table = Table(title="ms per generated token, batch 1, greedy, by length")
    for column in ("new tokens", "decoders ms/token", "transformers ms/token"):
        growth_table.add_column(column, justify="right")
    for tokens in args.growth:
        ours = measure("decoders", 1, "greedy", tokens, 1, args.model)
        theirs = measure("transformers", 1, "greedy", tokens, 1, args.model)
        growth += [ours, theirs]
        growth_table.add_row(str(tokens), f"{ours['ms_per_step']:.1f}", f"{theirs['ms_per_step']:.1f}")
    console = Console()
    console.print(table)
    console.print(growth_table)
    import torch

    machine = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "processor": platform.processor() or platform.machine()}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": machine, "results": rows, "growth": growth}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
