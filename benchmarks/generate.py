"""Tokens/s and peak memory of decoders vs transformers' ``model.generate``, same model, same strategy.

Each measurement runs in a fresh process (so peak memory is its own): load the model, warm up, then time
``decoders.generate`` or ``model.generate`` over a batch of prompts for N new tokens with EOS ignored (every row
runs all N steps in both). Peak memory is the process's peak resident size while generating minus its size just before (Linux).

    python benchmarks/generate.py                  # every section below
    python benchmarks/generate.py --sections beam logprobs   # some of them (the others keep their last results)
    python benchmarks/generate.py --quick          # a smoke run on a tiny model folder (see --model), in one process

Sections: ``main`` (batch 1 and 16, greedy and balanced, 64 tokens), ``growth`` (ms per token by length),
``beam`` (beam search, 4 beams, batch 4: tokens/s and whether both wrote the same hypotheses), ``contrastive``
(contrastive search, α 0.6 and k 4, against greedy decoding, both decoders': transformers 5 ships contrastive search
only as Hub code, which needs the network) and ``logprobs``
(the cost of ``logprobs=5`` on balanced sampling at batch 16, in alternating pairs within one process).
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
    "beam4": {"do_sample": False, "num_beams": 4},
    "contrastive": {"do_sample": False, "penalty_alpha": 0.6, "top_k": 4},
}
SECTIONS = ("main", "growth", "beam", "logprobs", "contrastive")
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

        def run(tokens: int) -> list[list[int]]:
            results = decoders.generate(prompts, chain, model=loaded, max_new_tokens=tokens, seed=0, ignore_eos=True)
            return [r.generated_ids for r in results]
    else:
        tokenizer = loaded.tokenizer
        tokenizer.padding_side = "left"
        inputs = tokenizer(prompts, return_tensors="pt", padding=True)
        config = loaded.model.generation_config
        config.eos_token_id = None  # run every row for all steps, as decoders does with ignore_eos

        def run(tokens: int) -> list[list[int]]:
            with torch.inference_mode():
                output = loaded.model.generate(
                    **inputs, max_new_tokens=tokens, min_new_tokens=None, pad_token_id=tokenizer.pad_token_id,
                    generation_config=config, **STRATEGIES[strategy],
                )  # fmt: skip
            return output[:, inputs["input_ids"].shape[1] :].tolist()

    run(4)  # warm up
    before = reset_peak_rss()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        outputs = run(new_tokens)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"impl": impl, "batch": batch, "strategy": strategy, "new_tokens": new_tokens, "seconds": seconds,
            "tokens_per_s": batch * new_tokens / seconds, "ms_per_step": seconds / new_tokens * 1e3,
            "peak_extra_mb": _status_mb("VmHWM") - before, "peak_rss_mb": _status_mb("VmHWM"),
            "outputs": outputs}  # fmt: skip


#: run workers in this process (``--quick``: a smoke run, whose peak memory means nothing) instead of a fresh one
IN_PROCESS = {"on": False}


def in_fresh_process(flag: str, function, *arguments, model_name: str | None) -> dict:
    """``function(*arguments, model_name)`` in a fresh Python process (this script with ``flag``), or in this one
    with ``--quick``; its numbers."""
    if IN_PROCESS["on"]:
        return function(*arguments, model_name)
    command = [sys.executable, __file__, flag, *map(str, arguments)] + (["--model", model_name] if model_name else [])
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(impl: str, batch: int, strategy: str, new_tokens: int, repeat: int, model_name: str | None) -> dict:
    """Run :func:`worker` in a fresh Python process (in this one with ``--quick``) and return its numbers."""
    return in_fresh_process("--worker", worker, impl, batch, strategy, new_tokens, repeat, model_name=model_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=5, metavar=("IMPL", "BATCH", "STRATEGY", "TOKENS", "REPEAT"), help=argparse.SUPPRESS)
    parser.add_argument("--logprobs-worker", nargs=3, type=int, metavar=("BATCH", "TOKENS", "PAIRS"), help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help="model name or folder (default: the embedded SmolLM2)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--growth", type=int, nargs="*", default=[32, 64, 128, 256, 512], help="lengths for the growth curve")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--beam-batch", type=int, default=4, help="prompts in the beam-search section")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2, 4 tokens, growth 4 and 8")
    parser.add_argument("--output", type=Path, default=RESULTS / "generate.json")
    args = parser.parse_args()
    if args.worker:
        impl, batch, strategy, tokens, repeat = args.worker
        print(json.dumps(worker(impl, int(batch), strategy, int(tokens), int(repeat), args.model)))
        return
    if args.logprobs_worker:
        print(json.dumps(logprobs_worker(*args.logprobs_worker, args.model)))
        return
    if args.quick:
        args.batch, args.new_tokens, args.growth, args.repeat, args.beam_batch = [2], 4, [4, 8], 1, 2
        IN_PROCESS["on"] = True

    from rich.console import Console

    console = Console()
    previous = json.loads(args.output.read_text()) if args.output.exists() and not args.quick else {}
    report = {key: previous.get(key, []) for key in ("results", "growth", "beam", "logprobs", "contrastive")}
    if "main" in args.sections:
        report["results"] = main_section(args, console)
    if "growth" in args.sections:
        report["growth"] = growth_section(args, console)
    if "beam" in args.sections:
        report["beam"] = beam_section(args, console)
    if "logprobs" in args.sections:
        report["logprobs"] = logprobs_section(args, console)
    if "contrastive" in args.sections:
        report["contrastive"] = contrastive_section(args, console)
    import torch

    machine = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "processor": platform.processor() or platform.machine()}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": machine, **report}, indent=2) + "\n")
    print(f"wrote {args.output}")


def _numbers(row: dict) -> dict:
    """A measurement without its outputs (which are only compared, not stored)."""
    return {k: v for k, v in row.items() if k != "outputs"}


def main_section(args, console) -> list[dict]:
    """decoders vs transformers at each batch size, greedy and balanced."""
    from rich.table import Table

    rows = []
    table = Table(title=f"tokens/s, {args.new_tokens} new tokens, EOS ignored (median of {args.repeat})")
    for column in ("batch", "strategy", "decoders tok/s", "transformers tok/s", "ratio", "decoders peak MB", "transformers peak MB"):
        table.add_column(column, justify="right")
    for batch in args.batch:
        for strategy in ("greedy", "balanced"):
            ours = measure("decoders", batch, strategy, args.new_tokens, args.repeat, args.model)
            theirs = measure("transformers", batch, strategy, args.new_tokens, args.repeat, args.model)
            rows += [_numbers(ours), _numbers(theirs)]
            table.add_row(str(batch), strategy, f"{ours['tokens_per_s']:.1f}", f"{theirs['tokens_per_s']:.1f}",
                          f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}", f"{ours['peak_extra_mb']:.0f}",
                          f"{theirs['peak_extra_mb']:.0f}")  # fmt: skip
    console.print(table)
    return rows


def growth_section(args, console) -> list[dict]:
    """ms per generated token at batch 1, greedy, by length (flat when the KV cache is used)."""
    from rich.table import Table

    growth = []
    table = Table(title="ms per generated token, batch 1, greedy, by length")
    for column in ("new tokens", "decoders ms/token", "transformers ms/token"):
        table.add_column(column, justify="right")
    for tokens in args.growth:
        ours = measure("decoders", 1, "greedy", tokens, 1, args.model)
        theirs = measure("transformers", 1, "greedy", tokens, 1, args.model)
        growth += [_numbers(ours), _numbers(theirs)]
        table.add_row(str(tokens), f"{ours['ms_per_step']:.1f}", f"{theirs['ms_per_step']:.1f}")
    console.print(table)
    return growth


def beam_section(args, console) -> list[dict]:
    """Beam search (4 beams) at batch ``--beam-batch``: tokens/s of each, and whether the hypotheses are identical."""
    ours = measure("decoders", args.beam_batch, "beam4", args.new_tokens, args.repeat, args.model)
    theirs = measure("transformers", args.beam_batch, "beam4", args.new_tokens, args.repeat, args.model)
    identical = ours["outputs"] == theirs["outputs"]
    ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
    console.print(
        f"beam search, 4 beams, batch {args.beam_batch}, {args.new_tokens} tokens: decoders {ours['tokens_per_s']:.1f} "
        f"tok/s, transformers {theirs['tokens_per_s']:.1f} tok/s, ratio {ratio:.2f}, identical outputs: {identical}"
    )
    return [{**_numbers(ours), "identical_to_transformers": identical}, _numbers(theirs)]


def contrastive_section(args, console) -> list[dict]:
    """Contrastive search (α 0.6, k 4) against greedy decoding, decoders both, at each batch size."""
    rows = []
    for batch in args.batch:
        greedy = measure("decoders", batch, "greedy", args.new_tokens, args.repeat, args.model)
        contrastive = measure("decoders", batch, "contrastive", args.new_tokens, args.repeat, args.model)
        ratio = contrastive["tokens_per_s"] / greedy["tokens_per_s"]
        console.print(
            f"contrastive search (α 0.6, k 4), batch {batch}: {contrastive['tokens_per_s']:.1f} tok/s, greedy "
            f"{greedy['tokens_per_s']:.1f} tok/s: {ratio:.2f}× greedy's speed"
        )
        rows += [_numbers(greedy), {**_numbers(contrastive), "ratio_to_greedy": ratio}]
    return rows


def logprobs_worker(batch: int, new_tokens: int, pairs: int, model_name: str | None) -> dict:
    """Balanced sampling with and without ``logprobs=5``, alternating in one process (so drift hits both alike)."""
    import decoders

    loaded = decoders.load_model(model_name)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    chain = decoders.Strategy.from_generation_config(STRATEGIES["balanced"])

    def run(logprobs: int | None) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        results = decoders.generate(
            prompts, chain, model=loaded, max_new_tokens=new_tokens, seed=0, ignore_eos=True, logprobs=logprobs
        )
        return time.perf_counter() - start, [r.generated_ids for r in results]

    run(None), run(5)  # warm up
    off, on, same = [], [], True
    for pair in range(pairs):
        first, second = (None, 5) if pair % 2 == 0 else (5, None)
        (t1, ids1), (t2, ids2) = run(first), run(second)
        off.append(t1 if first is None else t2)
        on.append(t2 if first is None else t1)
        same &= ids1 == ids2
    ratios = sorted(b / a - 1 for a, b in zip(off, on))
    return {"batch": batch, "new_tokens": new_tokens, "pairs": pairs, "off_s": off, "on_s": on,
            "overhead_median": statistics.median(ratios), "same_tokens": same}  # fmt: skip


def logprobs_section(args, console) -> list[dict]:
    """The cost of ``logprobs=5`` on balanced sampling at the largest batch: paired runs, same tokens."""
    batch = max(args.batch)
    result = in_fresh_process(
        "--logprobs-worker", logprobs_worker, batch, args.new_tokens, 2 * args.repeat, model_name=args.model
    )
    console.print(
        f"logprobs=5, balanced, batch {batch}, {result['pairs']} alternating pairs: median overhead "
        f"{result['overhead_median']:+.1%}, same tokens: {result['same_tokens']}"
    )
    return [result]


if __name__ == "__main__":
    main()
