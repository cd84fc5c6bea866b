"""Check decoders on a device in one command: parity with transformers' warpers and seeded sampling.

Runs on the device given (default the CPU) and prints a pass/fail table; the exit status is 1 if a check fails.

* parity: each truncation's dense rule equals transformers' warper of the same name on the same logits (same
  ``-inf`` positions and values), for language-model-like peaked rows, flat Zipf-shaped rows, and rows with ties
  and ``-inf`` entries; and a few chains give the same scores with and without the candidate-set fast path;
* seeded sampling: the same seeds give the same tokens twice, a row's token does not depend on the other rows of
  the batch, the tokens stay on the device, and a seed's draws are the same as on the CPU (each row draws on its
  own generator, then the draw moves to the logits' device); also with generators created on the device.

    python benchmarks/device_check.py --device cuda
    python benchmarks/device_check.py --quick      # tiny sizes (smoke run)
"""

from __future__ import annotations

import argparse
import sys

import torch
from rich.console import Console
from rich.table import Table
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

import decoders
from decoders.processors import EpsilonCutoff, EtaCutoff, MinP, Temperature, TopK, TopP, TypicalP
from decoders.selectors import row_uniforms

WARPERS = {
    "temperature 0.7": (lambda: Temperature(0.7), lambda: TemperatureLogitsWarper(0.7)),
    "top_k 50": (lambda: TopK(50), lambda: TopKLogitsWarper(50)),
    "top_p 0.9": (lambda: TopP(0.9), lambda: TopPLogitsWarper(0.9)),
    "top_p 0.95, keep 3": (lambda: TopP(0.95, 3), lambda: TopPLogitsWarper(0.95, min_tokens_to_keep=3)),
    "min_p 0.05": (lambda: MinP(0.05), lambda: MinPLogitsWarper(0.05)),
    "typical_p 0.9": (lambda: TypicalP(0.9), lambda: TypicalLogitsWarper(0.9)),
    "epsilon 3e-4": (lambda: EpsilonCutoff(3e-4), lambda: EpsilonLogitsWarper(3e-4)),
    "eta 3e-4": (lambda: EtaCutoff(3e-4), lambda: EtaLogitsWarper(3e-4)),
}
CHAINS = {
    "balanced": "balanced",
    "top_p": "top_p",
    "llama_cpp": "llama_cpp",
    "typical_p 0.95": {"processors": [{"kind": "typical_p", "typical_p": 0.95}], "selector": {"kind": "sample"}},
}

#: chains without whole-row sums (typical-p's entropy is one): a row alone rounds as in the batch
ROW_INDEPENDENT = ("balanced", "top_p", "llama_cpp")


def build(name: str, **options) -> decoders.Chain:
    """The chain ``name`` of :data:`CHAINS` (a preset or a strategy config)."""
    spec = CHAINS[name]
    strategy = decoders.Strategy.from_preset(spec) if isinstance(spec, str) else decoders.Strategy.model_validate(spec)
    return strategy.build(**options)


def logits_kinds(batch: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Peaked (a few boosted tokens over a Gaussian tail), flat Zipf-shaped, and ties with -inf, made on the CPU."""
    generator = torch.Generator().manual_seed(0)
    peaked = torch.randn(batch, vocab, generator=generator) * 2
    peaked = peaked.scatter_add(1, torch.randint(0, vocab, (batch, 20), generator=generator), torch.rand(batch, 20, generator=generator) * 12)
    ranks = torch.stack([torch.randperm(vocab, generator=generator) + 1 for _ in range(batch)])
    zipf = (-1.1 * ranks.double().log()).float()
    ties = (zipf * 4).round() / 4
    ties[:, ::7] = float("-inf")
    return {name: logits.to(device) for name, logits in (("peaked", peaked), ("zipf", zipf), ("ties, -inf", ties))}


def parity_checks(batch: int, vocab: int, device: torch.device) -> list[tuple[str, str, bool, str]]:
    rows = []
    input_ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
    for kind, logits in logits_kinds(batch, vocab, device).items():
        for name, (ours, theirs) in WARPERS.items():
            expected = theirs()(input_ids, logits)
            got = ours().process(input_ids, logits)
            same = got.device == logits.device and torch.equal(got, expected)
            kept = torch.isfinite(expected).sum(dim=-1).float().mean().item()
            rows.append(("parity", f"{name} on {kind}", same, f"{kept:.0f} tokens kept per row"))
        for name in CHAINS:
            fast, dense = build(name).process(input_ids, logits), build(name, use_candidates=False).process(input_ids, logits)
            rows.append(("parity", f"{name}: candidate path = dense path on {kind}", torch.equal(fast, dense), ""))
    return rows


def sampling_checks(batch: int, vocab: int, device: torch.device) -> list[tuple[str, str, bool, str]]:
    rows = []
    input_ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
    logits = logits_kinds(batch, vocab, device)["peaked"]

    def seeded(on: torch.device | str = "cpu") -> list[torch.Generator]:
        return [torch.Generator(device=on).manual_seed(1234 + row) for row in range(batch)]

    for preset in CHAINS:
        chain = build(preset)
        first, second = chain.select(input_ids, logits, seeded()), chain.select(input_ids, logits, seeded())
        rows.append(("sampling", f"{preset}: same seeds, same tokens", torch.equal(first, second), ""))
        rows.append(("sampling", f"{preset}: tokens on {device}", first.device == logits.device, str(first.device)))
        if preset in ROW_INDEPENDENT:
            alone = [chain.select(input_ids[row : row + 1], logits[row : row + 1], seeded()[row : row + 1]) for row in range(batch)]
            rows.append(("sampling", f"{preset}: a row's token does not depend on the batch", torch.equal(torch.cat(alone), first), ""))
        on_device = chain.select(input_ids, logits, seeded(device))
        again = chain.select(input_ids, logits, seeded(device))
        rows.append(("sampling", f"{preset}: generators on {device}, same seeds, same tokens", torch.equal(on_device, again), ""))
    draws = row_uniforms(batch, seeded(), device)
    cpu_draws = row_uniforms(batch, seeded())
    rows.append(("sampling", "a seed's draws on the device equal the CPU's", torch.equal(draws.cpu(), cpu_draws), str(draws.device)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device to check, e.g. cuda, cuda:1, mps (default cpu)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.vocab = 2, 4099
    try:
        device = torch.device(args.device)
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as error:
        sys.exit(f"device {args.device!r} is not available here ({error}); pass one torch can use, e.g. --device cpu")
    results = parity_checks(args.batch, args.vocab, device) + sampling_checks(args.batch, args.vocab, device)
    table = Table(title=f"decoders on {device} (torch {torch.__version__}), B {args.batch}, V {args.vocab}")
    for column in ("check", "case", "result", "detail"):
        table.add_column(column)
    for group, case, passed, detail in results:
        table.add_row(group, case, "[green]pass[/green]" if passed else "[red]FAIL[/red]", detail)
    Console(width=120).print(table)
    failed = sum(not passed for *_, passed, _ in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
