"""µs per sampling step: decoders' chain + selection vs transformers' processors + softmax + multinomial.

For each batch size B, vocabulary size V, chain and kind of logits, the same logits go through
  * decoders: ``Strategy.build().select(input_ids, logits, generators)``,
  * transformers: its warpers for the same chain (``LogitsProcessorList``), then ``softmax`` + ``multinomial``
    (``argmax`` for greedy), which is what ``model.generate(do_sample=True)`` does each step,
  * the floor: one ``amax`` pass over the logits (reading them once is the least any exact chain must do).

Logits are "synthetic" (Gaussian with a few peaked tokens), "realistic": next-token logits of the embedded
SmolLM2 model over varied texts (V = 49152; for larger V each row is extended with values resampled from its
own lower 90%, which keeps the head of the distribution and lengthens the tail), or "zipf": flat rows whose
probabilities follow Zipf's law (rank r has logit -1.1 · log r, ranks shuffled over the token ids), where the
top-p and typical-p sets hold tens of thousands of tokens. The three steps are timed in turn, repeat after
repeat (medians), so that load on the machine affects them alike.

    python benchmarks/sampling.py                 # full grid, writes benchmarks/results/sampling.json
    python benchmarks/sampling.py --quick         # tiny sizes (smoke run)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

import decoders

RESULTS = Path(__file__).parent / "results"
CHAINS = {
    "balanced": (
        {"processors": [{"kind": "temperature", "temperature": 0.7}, {"kind": "top_k", "top_k": 50}, {"kind": "top_p", "top_p": 0.9}], "selector": {"kind": "sample"}},
        lambda: [TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.9)],
    ),
    "top_p": ({"processors": [{"kind": "top_p", "top_p": 0.9}], "selector": {"kind": "sample"}}, lambda: [TopPLogitsWarper(0.9)]),
    "min_p": ({"processors": [{"kind": "min_p", "min_p": 0.1}], "selector": {"kind": "sample"}}, lambda: [MinPLogitsWarper(0.1)]),
    "typical_p": (
        {"processors": [{"kind": "typical_p", "typical_p": 0.9}], "selector": {"kind": "sample"}},
        lambda: [TypicalLogitsWarper(0.9)],
    ),
    "greedy": ({"processors": [], "selector": {"kind": "greedy"}}, lambda: []),
}
TEXTS = [
    "The history of the Roman Empire spans many centuries, from the founding of the city to the fall of Constantinople.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Once upon a time, in a small village by the sea, there lived an old fisherman and his curious granddaughter.",
    "To make a good cup of coffee, start with freshly ground beans and water just below boiling.",
    "Artificial intelligence (الذكاء الاصطناعي) is transforming the way we work, learn and communicate.",
    "Q: What is the capital of France?\nA: The capital of France is Paris.\nQ: And of Japan?\nA:",
    "Shopping list: eggs, milk, bread, two apples, a bag of rice, olive oil, and",
    "The theorem states that for every prime p and integer a, a^p is congruent to a modulo p, which",
]


def synthetic_logits(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Gaussian logits (σ 2) with 20 boosted tokens per row, like a confident model."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=generator) * 2
    peaks = torch.randint(0, vocab, (batch, 20), generator=generator)
    return logits.scatter_add(1, peaks, torch.rand(batch, 20, generator=generator) * 12)


def zipf_logits(batch: int, vocab: int, exponent: float = 1.1, seed: int = 0) -> torch.Tensor:
    """Rank-ordered Zipf logits: the token of rank r has logit ``-exponent · log r``; ranks shuffled per row."""
    generator = torch.Generator().manual_seed(seed)
    ranks = torch.stack([torch.randperm(vocab, generator=generator) + 1 for _ in range(batch)])
    return (-exponent * ranks.double().log()).float()


def realistic_logits(batch: int, vocab: int, model_name: str | None = None) -> torch.Tensor:
    """Next-token logits of the embedded model at the last positions of varied texts, resized to ``vocab``."""
    loaded = decoders.load_model(model_name)
    rows = []
    with torch.inference_mode():
        for text in TEXTS:
            ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
            rows.append(loaded.model(input_ids=ids).logits[0, -8:].float())
    logits = torch.cat(rows)[torch.arange(batch) % (len(TEXTS) * 8)]
    if vocab <= logits.shape[1]:
        return logits[:, :vocab].contiguous()
    generator = torch.Generator().manual_seed(0)
    low = logits.sort(dim=1).values[:, : int(logits.shape[1] * 0.9)]
    extra = low.gather(1, torch.randint(0, low.shape[1], (batch, vocab - logits.shape[1]), generator=generator))
    return torch.cat([logits, extra], dim=1).contiguous()


LOGITS = {"synthetic": synthetic_logits, "realistic": realistic_logits, "zipf": zipf_logits}


def time_us(steps: dict, repeat: int) -> dict[str, float]:
    """Median wall time in µs of each of ``steps`` (name → callable), timed in turn ``repeat`` times after a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for name, step in steps.items():
        step()
    for _ in range(repeat):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e6 for name, values in times.items()}


def measure(logits: torch.Tensor, chain_name: str, repeat: int) -> dict:
    config, hf_processors = CHAINS[chain_name]
    batch = logits.shape[0]
    input_ids = torch.zeros(batch, 1, dtype=torch.long)
    chain = decoders.Strategy.model_validate(config).build()
    generators = [torch.Generator().manual_seed(i) for i in range(batch)]
    hf = LogitsProcessorList(hf_processors())
    greedy = chain_name == "greedy"

    def transformers_step():
        scores = hf(input_ids, logits)
        return scores.argmax(dim=-1) if greedy else torch.multinomial(scores.softmax(dim=-1), 1)

    steps = {"ours": lambda: chain.select(input_ids, logits, generators), "theirs": transformers_step,
             "floor": lambda: logits.amax(dim=-1)}  # fmt: skip
    timed = time_us(steps, repeat)
    ours, theirs, floor = timed["ours"], timed["theirs"], timed["floor"]
    return {"decoders_us": ours, "transformers_us": theirs, "max_pass_us": floor,
            "speedup_vs_transformers": theirs / ours, "ratio_to_max_pass": ours / floor}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--vocab", type=int, nargs="+", default=[49152, 152064])
    parser.add_argument("--chains", nargs="+", default=list(CHAINS), choices=list(CHAINS))
    parser.add_argument("--logits", nargs="+", default=list(LOGITS), choices=list(LOGITS))
    parser.add_argument("--repeat", type=int, default=7, help="timed repetitions per cell (median reported)")
    parser.add_argument("--model", default=None, help="model for realistic logits (default: the embedded one)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS / "sampling.json")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.vocab, args.repeat = [2], [512], 2
    rows = []
    table = Table(title=f"µs per step (median of {args.repeat}), torch threads {torch.get_num_threads()}")
    for column in ("logits", "B", "V", "chain", "decoders µs", "transformers µs", "max pass µs", "× faster", "× max pass"):
        table.add_column(column, justify="right")
    for kind in args.logits:
        for vocab in args.vocab:
            for batch in args.batch:
                logits = realistic_logits(batch, vocab, args.model) if kind == "realistic" else LOGITS[kind](batch, vocab)
                for chain_name in args.chains:
                    row = {"logits": kind, "batch": batch, "vocab": vocab, "chain": chain_name, **measure(logits, chain_name, args.repeat)}
                    rows.append(row)
                    table.add_row(kind, str(batch), str(vocab), chain_name, f"{row['decoders_us']:.0f}", f"{row['transformers_us']:.0f}",
                                  f"{row['max_pass_us']:.0f}", f"{row['speedup_vs_transformers']:.1f}", f"{row['ratio_to_max_pass']:.1f}")  # fmt: skip
    Console().print(table)
    machine = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpus": __import__("os").cpu_count(), "processor": platform.processor() or platform.machine()}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
