"""Continuous batching against closed batches: requests arriving over time, served two ways on one model.

Requests arrive as a Poisson process (exponential gaps, a fixed seed), each with its own prompt, strategy (greedy,
top-p, min-p, balanced: all of the single search), seed and length (16 to 96 new tokens, EOS ignored so that
both ways do the same work). Both ways see the same arrivals in real time:

* **engine**: :class:`decoders.Engine`; a request joins the running batch at the next step after it arrives and
  its rows leave when it ends;
* **closed batches**: ``decoders.generate`` over every request that has arrived, as one call (one strategy per
  prompt, a mixed batch); requests that arrive meanwhile wait for the next call, and a call's results come at its
  end (what running requests as closed ``generate`` batches gives);
* **closed batches, streamed**: the same calls through ``decoders.stream``, each row counted done when it reaches its
  own length (the kindest reading of closed batches: a row's tokens stream out as they come).

Per request: time to first token (arrival → first token; for ``generate``, its return) and latency (arrival →
last token); overall: output tokens per second (all tokens / time from the first arrival to the last token). The
generated tokens of the engine and the closed batches are compared request by request. The engine runs first and
last (the mean of its two runs is compared), the closed ways between.

    python benchmarks/engine.py                         # the embedded model, 48 requests; writes results/engine.json
    python benchmarks/engine.py --rate 3 --requests 32  # another arrival rate (requests per second)
    python benchmarks/engine.py --model FOLDER --quick  # a smoke run on a tiny model

Without ``--rate``, the rate is set from a calibration run (closed batches of 8 requests) so that the requests'
tokens arrive at ``--load`` (default 0.8) times the tokens per second the machine serves them at: a busy machine.
Time it with ``OMP_NUM_THREADS=1`` when other work shares the cores (or on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
STRATEGIES = ["greedy", "top_p", "min_p", "balanced"]
LENGTHS = [16, 32, 64, 96]
PROMPTS = [
    "The history of the printing press begins",
    "Write a short poem about the sea.",
    "In a small village at the edge of the forest, there lived",
    "The main causes of the French Revolution were",
    "Explain how a rainbow forms.",
    "My favourite recipe for a rainy day is",
    "Once upon a time",
    "The three most important inventions of the twentieth century are",
]


def make_requests(count: int, rate: float, seed: int) -> list[dict]:
    """``count`` requests with Poisson arrival times (``rate`` per second), prompts, strategies, seeds, lengths."""
    chooser = random.Random(seed)
    clock, requests = 0.0, []
    for index in range(count):
        requests.append(
            {
                "arrival": clock,
                "prompt": chooser.choice(PROMPTS),
                "strategy": chooser.choice(STRATEGIES),
                "seed": index,
                "max_new_tokens": chooser.choice(LENGTHS),
            }
        )
        clock += chooser.expovariate(rate)
    return requests


def serve_engine(loaded, requests: list[dict], max_rows: int | None = None) -> list[dict]:
    """The engine: add each request when its arrival time comes, step while any is pending."""
    import decoders

    engine = decoders.Engine(loaded, max_rows=max_rows)  # texts decoded at every step, as the closed side's stream does
    start, waiting, ids, timings = time.perf_counter(), list(requests), {}, {}
    while waiting or engine.pending:
        now = time.perf_counter() - start
        while waiting and waiting[0]["arrival"] <= now:
            request = waiting.pop(0)
            ids[engine.add(request["prompt"], request["strategy"], seed=request["seed"],
                           max_new_tokens=request["max_new_tokens"], ignore_eos=True)] = request  # fmt: skip
        if not engine.pending:
            time.sleep(max(0.0, waiting[0]["arrival"] - now))
            continue
        events = engine.step()
        now = time.perf_counter() - start
        for event in events:
            timing = timings.setdefault(event.request, {})
            timing.setdefault("first", now)
            if event.finished:
                timing["last"] = now
    return [
        _row(ids[request], timings[request]["first"], timings[request]["last"], engine.result(request).generated_ids)
        for request in ids
    ]


def serve_closed(loaded, requests: list[dict], streamed: bool) -> list[dict]:
    """Closed batches: one call over every request that has arrived; the next call once it has ended. ``streamed``:
    a row is done when its own last token streams out; else every row of a call when the call returns."""
    import decoders

    start, waiting, rows = time.perf_counter(), list(requests), []
    while waiting:
        now = time.perf_counter() - start
        if waiting[0]["arrival"] > now:
            time.sleep(waiting[0]["arrival"] - now)
            continue
        batch = [r for r in waiting if r["arrival"] <= now]
        waiting = waiting[len(batch) :]
        longest = max(r["max_new_tokens"] for r in batch)
        first: dict[int, float] = {}
        last: dict[int, float] = {}
        tokens: list[list[int]] = [[] for _ in batch]
        events = decoders.stream(
            [r["prompt"] for r in batch], [r["strategy"] for r in batch], loaded, seed=[r["seed"] for r in batch],
            max_new_tokens=longest, ignore_eos=True,
        )  # fmt: skip
        for event in events:  # a call runs every row to its longest length: a row is done at its own length
            now = time.perf_counter() - start
            for row, token in enumerate(event.token_ids):
                if token is not None and len(tokens[row]) < batch[row]["max_new_tokens"]:
                    first.setdefault(row, now)
                    tokens[row].append(token)
                    if len(tokens[row]) == batch[row]["max_new_tokens"]:
                        last[row] = now
        if not streamed:  # generate returns every row at the call's end
            first = last = dict.fromkeys(range(len(batch)), time.perf_counter() - start)
        rows += [_row(r, first[i], last[i], tokens[i]) for i, r in enumerate(batch)]
    return rows


def _row(request: dict, first: float, last: float, tokens: list[int]) -> dict:
    return {
        **request, "ttft": first - request["arrival"], "latency": last - request["arrival"], "end": last,
        "tokens": tokens,
    }  # fmt: skip


def summary(rows: list[dict]) -> dict:
    latencies = [r["latency"] for r in rows]
    ttfts = sorted(r["ttft"] for r in rows)
    tokens = sum(len(r["tokens"]) for r in rows)
    span = max(r["end"] for r in rows) - min(r["arrival"] for r in rows)
    return {
        "mean_latency_s": statistics.mean(latencies),
        "p50_latency_s": statistics.median(latencies),
        "p90_latency_s": sorted(latencies)[int(0.9 * (len(latencies) - 1))],
        "mean_ttft_s": statistics.mean(ttfts),
        "p50_ttft_s": statistics.median(ttfts),
        "tokens_per_s": tokens / span,
        "span_s": span,
    }


def calibrate(loaded, load: float) -> float:
    """The arrival rate (requests/s) at which tokens arrive at ``load`` × what closed batches of 8 serve."""
    import decoders

    requests = make_requests(8, 1e9, seed=1)
    decoders.generate("warm up", "greedy", loaded, max_new_tokens=4)
    start = time.perf_counter()
    decoders.generate([r["prompt"] for r in requests], [r["strategy"] for r in requests], loaded,
                      seed=[r["seed"] for r in requests], max_new_tokens=max(LENGTHS), ignore_eos=True)  # fmt: skip
    tokens_per_s = 8 * max(LENGTHS) / (time.perf_counter() - start)
    return load * tokens_per_s / statistics.mean(LENGTHS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or folder (default: the embedded model)")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--rate", type=float, default=None, help="arrivals per second (default: calibrated)")
    parser.add_argument("--load", type=float, default=0.8, help="offered load for the calibrated rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals and choices")
    parser.add_argument("--max-rows", type=int, default=None, help="the engine's bound on live rows (default: none)")
    parser.add_argument("--rate-only", action="store_true", help="print the calibrated rate and stop")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 6 requests, short lengths")
    parser.add_argument("--output", type=Path, default=RESULTS / "engine.json")
    args = parser.parse_args()

    import torch

    import decoders

    loaded = decoders.load_model(args.model)
    load_before = os.getloadavg()[0]
    if args.quick:
        LENGTHS[:] = [2, 4]
        args.requests = 6
    rate = args.rate or calibrate(loaded, args.load)
    if args.rate_only:
        print(f"rate {rate:.3f} requests/s")
        return
    requests = make_requests(args.requests, rate, args.seed)
    decoders.generate("warm up", "greedy", loaded, max_new_tokens=4)
    results = {}
    ways = (
        ("engine", lambda *a: serve_engine(*a, args.max_rows)), ("closed", lambda *a: serve_closed(*a, streamed=False)),
        ("closed_streamed", lambda *a: serve_closed(*a, streamed=True)),
        ("engine_again", lambda *a: serve_engine(*a, args.max_rows)),
    )  # fmt: skip
    for way, serve in ways:
        rows = serve(loaded, requests)
        results[way] = {"summary": summary(rows), "rows": rows}
        print(way, json.dumps(results[way]["summary"]))
    engine_rows = sorted(results["engine"]["rows"], key=lambda r: r["seed"])
    closed_rows = sorted(results["closed"]["rows"], key=lambda r: r["seed"])
    same = sum(a["tokens"] == b["tokens"] for a, b in zip(engine_rows, closed_rows))
    engine_mean = statistics.mean([results["engine"]["summary"]["mean_latency_s"],
                                   results["engine_again"]["summary"]["mean_latency_s"]])  # fmt: skip
    report = {
        "model": loaded.name,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_average_before": load_before,
        "requests": args.requests,
        "max_rows": args.max_rows,
        "rate_per_s": rate,
        "lengths": LENGTHS,
        "strategies": STRATEGIES,
        "identical_tokens": f"{same} of {len(engine_rows)}",
        "latency_ratio_engine_over_closed": engine_mean / results["closed"]["summary"]["mean_latency_s"],
        "latency_ratio_engine_over_closed_streamed": engine_mean
        / results["closed_streamed"]["summary"]["mean_latency_s"],
        "throughput_ratio_engine_over_closed": results["engine"]["summary"]["tokens_per_s"]
        / results["closed"]["summary"]["tokens_per_s"],
        **{way: result["summary"] for way, result in results.items()},
    }
    print(json.dumps(report, indent=2))
    if not args.quick:
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
