"""Tokens/s and peak memory of decoders vs transformers' ``model.generate``, same model, same strategy.

Each measurement runs in a fresh process (so peak memory is its own): load the model, warm up, then time
``decoders.generate`` or ``model.generate`` over a batch of prompts for N new tokens with EOS ignored (every row
runs all N steps in both). Peak memory is the process's peak resident size while generating minus its size just before (Linux).

    python benchmarks/generate.py                  # every section below
    python benchmarks/generate.py --sections beam logprobs   # some of them (the others keep their last results)
    python benchmarks/generate.py --quick          # a smoke run on a tiny model folder (see --model), in one process

Sections: ``main`` (batch 1 and 16, greedy and balanced, 64 tokens), ``throughput`` (in-process alternating
pairs: greedy batch 1 and balanced batch 16 against ``model.generate``; a chat batch of 8 where 4 answers end
within 16 tokens and 4 run to 128, EOS honoured, against ``model.generate``, and the same 8 prompts 8 times (64
rows, 32 end early); and 6 presets × 8 prompts in one mixed call against six single-strategy calls; ``--cases``
runs some of them), ``growth`` (ms per token by length),
``beam`` (beam search, 4 beams, batch 4: tokens/s and whether both wrote the same hypotheses), ``contrastive``
(contrastive search, α 0.6 and k 4, against greedy decoding, both decoders': transformers 5 ships contrastive search
only as Hub code, which needs the network) and ``logprobs``
(the cost of ``logprobs=5`` on balanced sampling at batch 16, in alternating pairs within one process) and
``speculative`` (``benchmarks/speculative.py``: prompt lookup at batch 1 on a grounded and an open-ended chat task
against plain greedy and transformers' own prompt lookup), and ``forward`` (the model alone: ms per decoding
step of its forward pass by batch size, 1 to 128 rows, after a 48-token prompt — what bounds every end-to-end
ratio above).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
STRATEGIES = {
    "greedy": {"do_sample": False},
    "balanced": {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9},
    "beam4": {"do_sample": False, "num_beams": 4},
    "contrastive": {"do_sample": False, "penalty_alpha": 0.6, "top_k": 4},
}
SECTIONS = ("main", "throughput", "growth", "beam", "logprobs", "contrastive", "speculative", "forward")
#: the six presets of the mixed-batch comparison (the tutorial's, without beam search)
MIXED_PRESETS = ("greedy", "low_temperature", "high_temperature", "top_k", "top_p", "balanced")
#: chat prompts whose greedy answers (SmolLM2-135M-Instruct) end within 16 tokens (the first four: 8, 3, 8 and 12
#: tokens) or run past 128 (the last four)
CHAT_PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "Reply with only yes or no: is water wet?",
    "What is 2 + 2? Give only the number.",
    "What color is the sky on a clear day? One word.",
    "Write a long story about a dragon who learns to paint.",
    "Explain in detail how a car engine works.",
    "Write a detailed essay about the history of the Roman Empire.",
    "Describe, step by step, how to bake bread at home.",
]
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
    parser.add_argument("--paired-worker", nargs=3, metavar=("CASE", "TOKENS", "PAIRS"), help=argparse.SUPPRESS)
    parser.add_argument("--forward-worker", nargs=3, type=int, metavar=("MAX_BATCH", "CONTEXT", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=3, help="alternating pairs per throughput case")
    parser.add_argument("--cases", nargs="+", choices=PAIRED_CASES, default=list(PAIRED_CASES), help="throughput cases to run")
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
    if args.paired_worker:
        case, tokens, pairs = args.paired_worker
        print(json.dumps(paired_worker(case, int(tokens), int(pairs), args.model)))
        return
    if args.forward_worker:
        print(json.dumps(forward_worker(*args.forward_worker, args.model)))
        return
    if args.quick:
        args.batch, args.new_tokens, args.growth, args.repeat, args.beam_batch = [2], 4, [4, 8], 1, 2
        args.pairs = 1
        IN_PROCESS["on"] = True

    from rich.console import Console

    console = Console()
    previous = json.loads(args.output.read_text()) if args.output.exists() and not args.quick else {}
    report = {key: previous.get(key, []) for key in ("results", *SECTIONS[1:])}
    if "main" in args.sections:
        report["results"] = main_section(args, console)
    if "throughput" in args.sections:  # the cases not run keep their last results
        new = {row["case"]: row for row in throughput_section(args, console)}
        kept = [row for row in report["throughput"] if row["case"] not in new and row["case"] in PAIRED_CASES]
        report["throughput"] = sorted([*kept, *new.values()], key=lambda row: PAIRED_CASES.index(row["case"]))
    if "growth" in args.sections:
        report["growth"] = growth_section(args, console)
    if "beam" in args.sections:
        report["beam"] = beam_section(args, console)
    if "logprobs" in args.sections:
        report["logprobs"] = logprobs_section(args, console)
    if "contrastive" in args.sections:
        report["contrastive"] = contrastive_section(args, console)
    if "speculative" in args.sections:
        report["speculative"] = speculative_section(args)
    if "forward" in args.sections:
        report["forward"] = forward_section(args, console)
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


def speculative_section(args) -> list[dict]:
    """Speculative decoding at batch 1, by ``benchmarks/speculative.py`` in its own process (grounded and
    open-ended chat tasks against plain greedy and transformers' prompt lookup); also in ``results/speculative.json``."""
    output = RESULTS / "speculative.json" if not args.quick else Path(tempfile.mkdtemp()) / "speculative.json"
    command = [sys.executable, str(Path(__file__).with_name("speculative.py")), "--output", str(output)]
    command += ["--quick"] if args.quick else []
    command += ["--model", args.model] if args.model else []
    subprocess.run(command, check=True)
    return json.loads(output.read_text())["rows"]


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


#: the throughput cases: what each side runs (``tokens`` new tokens; the chat case's 128 is its own)
PAIRED_CASES = ("greedy_batch1", "balanced_batch16", "chat_batch8_early_eos", "chat_batch64_early_eos", "mixed_6x8")


def paired_worker(case: str, new_tokens: int, pairs: int, model_name: str | None) -> dict:
    """One throughput case, decoders (A) against its baseline (B), alternating A/B and B/A pairs in this process
    (so the machine's drift hits both alike); the ratio is the median of the pairs' B time / A time."""
    import torch

    import decoders

    loaded = decoders.load_model(model_name)
    tokenizer = loaded.tokenizer

    def hf_run(prompts: list[str], options: dict, tokens: int, eos: bool, chat: bool = False) -> list[list[int]]:
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ] if chat else prompts  # fmt: skip
        inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=not chat)
        config = loaded.model.generation_config
        eos_ids = list(loaded.eos_token_ids)
        config.eos_token_id = eos_ids if eos else None
        with torch.inference_mode():
            output = loaded.model.generate(
                **inputs, max_new_tokens=tokens, min_new_tokens=None, pad_token_id=tokenizer.pad_token_id,
                generation_config=config, **options,
            )  # fmt: skip
        rows = output[:, inputs["input_ids"].shape[1] :].tolist()
        if eos:  # up to and including the first EOS, as decoders reports a row
            rows = [row[: next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))] for row in rows]
        return rows

    def ours(prompts, strategy, tokens, **options) -> list[list[int]]:
        results = decoders.generate(prompts, strategy, model=loaded, max_new_tokens=tokens, **options)
        return [r.generated_ids for r in results]

    if case == "greedy_batch1":
        prompts = PROMPTS[:1]
        run_a = lambda: ours(prompts, "greedy", new_tokens, ignore_eos=True)  # noqa: E731
        run_b = lambda: hf_run(prompts, STRATEGIES["greedy"], new_tokens, eos=False)  # noqa: E731
        baseline, compare_tokens = "model.generate", True
    elif case == "balanced_batch16":
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(16)]
        chain = decoders.Strategy.from_generation_config(STRATEGIES["balanced"])
        run_a = lambda: ours(prompts, chain, new_tokens, ignore_eos=True, seed=0)  # noqa: E731
        run_b = lambda: hf_run(prompts, STRATEGIES["balanced"], new_tokens, eos=False)  # noqa: E731
        baseline, compare_tokens = "model.generate", False  # different random draws
    elif case in ("chat_batch8_early_eos", "chat_batch64_early_eos"):
        new_tokens = 128 if new_tokens >= 16 else new_tokens  # (--quick: a smoke run)
        chat = bool(getattr(tokenizer, "chat_template", None))  # (a tiny test model has no template)
        prompts = CHAT_PROMPTS * (8 if case == "chat_batch64_early_eos" else 1)  # half the rows end early
        run_a = lambda: ours(prompts, "greedy", new_tokens, chat=chat)  # noqa: E731
        run_b = lambda: hf_run(prompts, STRATEGIES["greedy"], new_tokens, eos=True, chat=chat)  # noqa: E731
        baseline, compare_tokens = "model.generate", True
    elif case == "mixed_6x8":
        strategies = [name for name in MIXED_PRESETS for _ in PROMPTS]
        seeds = [row for _ in MIXED_PRESETS for row in range(len(PROMPTS))]  # row i of every preset: seed 0 + i
        run_a = lambda: ours(PROMPTS * len(MIXED_PRESETS), strategies, new_tokens, ignore_eos=True, seed=seeds)  # noqa: E731
        run_b = lambda: [  # noqa: E731
            ids for name in MIXED_PRESETS for ids in ours(PROMPTS, name, new_tokens, ignore_eos=True, seed=0)
        ]
        baseline, compare_tokens = "six single-strategy calls", True
    else:
        raise ValueError(f"unknown case {case!r}: one of {', '.join(PAIRED_CASES)}")

    def timed(run) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        outputs = run()
        return time.perf_counter() - start, outputs

    timed(run_a), timed(run_b)  # warm up
    a_times, b_times, identical = [], [], True
    outputs_a = outputs_b = None
    for pair in range(pairs):
        order = (run_a, run_b) if pair % 2 == 0 else (run_b, run_a)
        (t1, o1), (t2, o2) = timed(order[0]), timed(order[1])
        (ta, outputs_a), (tb, outputs_b) = ((t1, o1), (t2, o2)) if pair % 2 == 0 else ((t2, o2), (t1, o1))
        a_times.append(ta)
        b_times.append(tb)
        identical &= outputs_a == outputs_b
    tokens_a = sum(map(len, outputs_a))
    return {
        "case": case, "baseline": baseline, "pairs": pairs, "new_tokens": new_tokens, "rows": len(outputs_a),
        "decoders_s": a_times, "baseline_s": b_times,
        "speedup_median": statistics.median(b / a for a, b in zip(a_times, b_times)),
        "generated_tokens": tokens_a, "row_lengths": [len(o) for o in outputs_a],
        "identical_tokens": identical if compare_tokens else None,
        "identical_rows": sum(a == b for a, b in zip(outputs_a, outputs_b)) if compare_tokens else None,
        "threads": torch.get_num_threads(),
    }  # fmt: skip


def throughput_section(args, console) -> list[dict]:
    """Each throughput case in its own fresh process, alternating pairs inside it."""
    rows = []
    for case in args.cases:
        tokens = args.new_tokens
        result = in_fresh_process("--paired-worker", paired_worker, case, tokens, args.pairs, model_name=args.model)
        rows.append(result)
        same = "" if result["identical_tokens"] is None else f", identical rows {result['identical_rows']}/{result['rows']}"
        console.print(
            f"{case}: decoders {statistics.median(result['decoders_s']):.2f} s, {result['baseline']} "
            f"{statistics.median(result['baseline_s']):.2f} s, speed-up {result['speedup_median']:.2f}× "
            f"(median of {result['pairs']} alternating pairs{same})"
        )
    return rows


def forward_worker(max_batch: int, context: int, steps: int, model_name: str | None) -> dict:
    """The model's own forward pass, no decoding code: median ms of one decoding step (one new token per row over a
    KV cache of ``context`` tokens) at batch 1, 2, 4, … ``max_batch``."""
    import torch

    import decoders
    from decoders.session import _ModelCall

    model = decoders.load_model(model_name).model
    call = _ModelCall(model)  # the model called with the keyword names its forward takes (KV cache, logits kept)
    generator = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        batch = 1
        while batch <= max_batch:
            ids = torch.randint(100, model.config.vocab_size, (batch, context + steps + 1), generator=generator)
            _, _, cache = call(ids[:, :context], None, None, None, keep=1, hidden=False)
            times = []
            for step in range(steps + 1):  # the first step warms up
                start = time.perf_counter()
                _, _, cache = call(ids[:, context + step : context + step + 1], None, None, cache, keep=1, hidden=False)
                times.append(time.perf_counter() - start)
            ms = statistics.median(times[1:]) * 1e3
            rows.append({"batch": batch, "ms_per_step": ms, "ms_per_row": ms / batch})
            batch *= 2
    return {"context": context, "steps": steps, "threads": torch.get_num_threads(), "rows": rows}


def forward_section(args, console) -> list[dict]:
    """ms per decoding step of the model's forward pass alone, by batch size, in a fresh process."""
    from rich.table import Table

    max_batch, context, steps = (2, 8, 2) if args.quick else (128, 48, 12)
    result = in_fresh_process("--forward-worker", forward_worker, max_batch, context, steps, model_name=args.model)
    table = Table(title=f"the model's forward pass alone: one decoding step after {context} tokens (median of {steps})")
    for column in ("batch", "ms per step", "ms per row"):
        table.add_column(column, justify="right")
    for row in result["rows"]:
        table.add_row(str(row["batch"]), f"{row['ms_per_step']:.1f}", f"{row['ms_per_row']:.2f}")
    console.print(table)
    return [result]


if __name__ == "__main__":
    main()
