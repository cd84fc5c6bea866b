"""Speculative decoding at batch 1 on the embedded model: tokens/s against plain greedy and transformers' prompt lookup.

Two chat tasks, greedy, EOS honoured (every implementation writes the same tokens, which is checked):

* **grounded**: repeat, or lightly edit, a passage from ``benchmarks/data`` given in the prompt: most of the
  answer can be looked up in the prompt;
* **open-ended**: write something new: prompt lookup rarely finds what comes next, so the heuristic schedule
  has to back off.

Four implementations run in alternating order within one process (so the machine's drift hits them alike): plain
greedy (``decoders.generate``), speculative prompt lookup (``decoders``, ``prompt_lookup_num_tokens`` 10,
``max_matching_ngram_size`` 2), transformers' greedy ``model.generate``, and transformers' ``model.generate`` with
``prompt_lookup_num_tokens=10`` (its default n-gram size is 2 as well). Reported: tokens/s (median time of the
repeats), speculative's ratio to each of the others (median of per-repeat ratios), and the acceptance rate.

    python benchmarks/speculative.py              # writes results/speculative.json, prints a table
    python benchmarks/speculative.py --quick      # a smoke run on a tiny model folder (see --model)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).parent / "data" / "britannica1911_shakespeare.jsonl"
LOOKUP = {"prompt_lookup_num_tokens": 10, "max_matching_ngram_size": 2}
IMPLEMENTATIONS = ("decoders_greedy", "decoders_speculative", "transformers_greedy", "transformers_prompt_lookup")


def passages(count: int, words: int | None = None) -> list[str]:
    """The first ``count`` passages of the benchmark data: each prompt with its human continuation (its first
    ``words`` words if given)."""
    lines = DATA.read_text(encoding="utf-8").splitlines()[:count]
    texts = [(row["prompt"] + row["continuation"]).strip() for row in map(json.loads, lines)]
    return [" ".join(text.split()[:words]) for text in texts] if words else texts


def tasks(count: int, words: int | None = None) -> dict[str, list[str]]:
    """Chat prompts of each task."""
    texts = passages(count, words)
    grounded = [
        f"Repeat the following passage exactly, word for word:\n\n{texts[0]}",
        f"Rewrite the following passage, replacing every 'Shakespeare' with 'the poet' and changing nothing else:\n\n{texts[1 % count]}",
    ]
    open_ended = [
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "Explain to a child why the sky is blue, in a few paragraphs.",
    ]
    return {"grounded": grounded, "open_ended": open_ended}


def run_case(loaded, prompt: str, new_tokens: int, repeats: int, chat: bool) -> dict:
    import torch

    import decoders
    from decoders.driver import encode_prompts

    tokenizer, model = loaded.tokenizer, loaded.model
    ids = torch.tensor(encode_prompts(tokenizer, [prompt], chat))
    eos = list(loaded.eos_token_ids)
    speculative = {"search": {"kind": "speculative", **LOOKUP}}
    stats: dict = {}

    def ours(strategy):
        result = decoders.generate(prompt, strategy, model=loaded, max_new_tokens=new_tokens, chat=chat)
        if result.speculation is not None:
            stats["drafted"], stats["accepted"] = result.speculation.drafted, result.speculation.accepted
            stats["passes"] = result.speculation.steps + 1
        return result.generated_ids

    def theirs(**options):
        config = model.generation_config
        config.eos_token_id = eos
        with torch.inference_mode():
            output = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                pad_token_id=tokenizer.pad_token_id, generation_config=config, **options,
            )  # fmt: skip
        row = output[0, ids.shape[1] :].tolist()
        return row[: next((i + 1 for i, t in enumerate(row) if t in eos), len(row))]

    runs = {
        "decoders_greedy": lambda: ours("greedy"),
        "decoders_speculative": lambda: ours(speculative),
        "transformers_greedy": lambda: theirs(),
        "transformers_prompt_lookup": lambda: theirs(**LOOKUP),
    }
    for run in runs.values():  # warm up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, list[int]] = {}
    for repeat in range(repeats):
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for name in order:
            start = time.perf_counter()
            outputs[name] = runs[name]()
            times[name].append(time.perf_counter() - start)
    tokens = len(outputs["decoders_speculative"])
    ratio = lambda other: statistics.median(b / a for a, b in zip(times["decoders_speculative"], times[other]))  # noqa: E731
    return {
        "prompt": prompt[:80], "prompt_tokens": int(ids.shape[1]), "generated_tokens": tokens,
        "identical_tokens": all(output == outputs["decoders_greedy"] for output in outputs.values()),
        "tokens_per_s": {name: len(outputs[name]) / statistics.median(times[name]) for name in runs},
        "speculative_vs_greedy": ratio("decoders_greedy"),
        "speculative_vs_transformers_greedy": ratio("transformers_greedy"),
        "speculative_vs_transformers_prompt_lookup": ratio("transformers_prompt_lookup"),
        "acceptance_rate": stats["accepted"] / stats["drafted"] if stats.get("drafted") else None,
        "drafted": stats.get("drafted"), "accepted": stats.get("accepted"), "forward_passes": stats.get("passes"),
        "times_s": times,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or folder (default: the embedded model)")
    parser.add_argument("--new-tokens", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 tokens, 1 repeat (written only to --output)")
    parser.add_argument("--output", type=Path, default=None, help="default: results/speculative.json (not with --quick)")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 8, 1

    import torch
    from rich.console import Console
    from rich.table import Table

    import decoders

    console = Console()
    loaded = decoders.load_model(args.model)
    chat = bool(getattr(loaded.tokenizer, "chat_template", None))
    rows = []
    for task, prompts in tasks(2, words=12 if args.quick else None).items():
        for prompt in prompts:
            row = {"task": task, **run_case(loaded, prompt, args.new_tokens, args.repeats, chat)}
            rows.append(row)
            console.print(f"{task}: {row['prompt'][:50]!r} done", highlight=False)
    table = Table(title=f"Speculative decoding (prompt lookup 10), batch 1, {loaded.name}, greedy, chat")
    for column in ("task", "tokens", "greedy tok/s", "speculative tok/s", "hf greedy tok/s", "hf lookup tok/s",
                   "× greedy", "× hf lookup", "accepted", "same tokens"):  # fmt: skip
        table.add_column(column, justify="left" if column == "task" else "right")
    for row in rows:
        rate = row["tokens_per_s"]
        accepted = "-" if row["acceptance_rate"] is None else f"{row['accepted']}/{row['drafted']} ({row['acceptance_rate']:.0%})"
        table.add_row(
            row["task"], str(row["generated_tokens"]), f"{rate['decoders_greedy']:.1f}", f"{rate['decoders_speculative']:.1f}",
            f"{rate['transformers_greedy']:.1f}", f"{rate['transformers_prompt_lookup']:.1f}",
            f"{row['speculative_vs_greedy']:.2f}", f"{row['speculative_vs_transformers_prompt_lookup']:.2f}", accepted,
            str(row["identical_tokens"]),
        )  # fmt: skip
    console.print(table)
    output = args.output or (None if args.quick else RESULTS / "speculative.json")
    if output is None:
        return
    payload = {
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "platform": platform.platform()},
        "model": loaded.name, "new_tokens": args.new_tokens, "repeats": args.repeats, "lookup": LOOKUP, "rows": rows,
    }  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {output}")


if __name__ == "__main__":
    main()
