"""Serving: N concurrent streaming clients against ``decoders serve`` and ``transformers serve --continuous-batching``.

Both servers load the same model folder on the same machine, one at a time, in a process of their own; the clients
run in this process (plain asyncio HTTP, so that they take little of the CPU the servers share with them). At each
concurrency level N (default 1, 4, 16, 32) N clients each send requests one after another, ``--requests`` in all,
streamed (server-sent events), with mixed parameters: completions and chat, greedy (temperature 0) and sampling
(temperature 0.7 or 1.0, top-p 0.9 or 1, a seed per request), 24 to 40 new tokens (``--max-tokens``).

Per level: requests per second and output tokens per second (requests, tokens / the level's wall time), time to
first token (request sent → first text) p50/p99, and inter-token latency p50/p99 (per request: (last text − first
text) / (tokens − 1)); tokens are the servers' ``usage.completion_tokens`` (``stream_options.include_usage``).
Each server in float32 and bfloat16 (``--dtypes``).

    OMP_NUM_THREADS=1 python benchmarks/serve.py                  # the embedded model's folder; results/serve.json
    python benchmarks/serve.py --servers decoders --dtypes float32 --levels 1 4
    python benchmarks/serve.py --model FOLDER --quick             # a smoke run (tiny sizes)
    python benchmarks/serve.py --url http://127.0.0.1:8000 --model-name NAME --quick   # a server already running

``transformers serve`` needs ``transformers[serving]`` (fastapi, accelerate, …); ``--transformers-python`` runs it
with another interpreter, e.g. a virtual environment made with ``--system-site-packages`` that adds that extra
without touching this one. Without it, the transformers rows say why they are missing. Its continuous batching runs
with ``--cb-num-blocks 256 --cb-block-size 32 --cb-max-batch-tokens 512`` (its default reserves 60 % of the RAM).
Only loopback addresses are used; every level sends a bounded number of requests and every request has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PROMPTS = [
    "The history of the printing press begins",
    "Write a short poem about the sea.",
    "In a small village at the edge of the forest, there lived",
    "Explain how a rainbow forms.",
    "The three most important inventions of the twentieth century are",
    "My favourite recipe for a rainy day is",
]
#: the decoders server's rows: enough for the largest level (each request takes one row)
DECODERS_ROWS = 32
#: transformers' continuous batching: a KV cache of 256 blocks of 32 tokens, at most 512 tokens per forward pass
TRANSFORMERS_CB = ["--cb-num-blocks", "256", "--cb-block-size", "32", "--cb-max-batch-tokens", "512"]
REQUEST_TIMEOUT = 300.0


@dataclass
class Record:
    """One streamed request as the client saw it."""

    sent: float
    first: float | None = None
    last: float | None = None
    tokens: int = 0
    text: str = ""
    error: str | None = None
    times: list[float] = field(default_factory=list)


def make_bodies(count: int, model: str, max_tokens: int, seed: int) -> list[tuple[str, dict]]:
    """``count`` (path, body) pairs with mixed parameters, the same for every server."""
    chooser = random.Random(seed)
    bodies = []
    for index in range(count):
        prompt = chooser.choice(PROMPTS)
        body: dict = {"model": model, "max_tokens": chooser.randint(max_tokens * 3 // 5, max_tokens), "stream": True,
                      "stream_options": {"include_usage": True}}  # fmt: skip
        kind = chooser.choice(["greedy", "sample", "nucleus"])
        if kind == "greedy":
            body["temperature"] = 0
        else:
            body.update(
                temperature=0.7 if kind == "nucleus" else 1.0, top_p=0.9 if kind == "nucleus" else 1.0, seed=index
            )
        if index % 2:
            bodies.append(("/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}))
        else:
            bodies.append(("/v1/completions", {**body, "prompt": prompt}))
    return bodies


async def stream_request(host: str, port: int, path: str, body: dict) -> Record:
    """POST ``body`` and read its server-sent events (HTTP/1.1, chunked or not), timing each piece of text."""
    record = Record(sent=time.perf_counter())
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        status = (await reader.readline()).decode().split()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        chunked = "chunked" in headers.get("transfer-encoding", "")
        buffer = b""

        def feed(data: bytes) -> None:
            nonlocal buffer
            buffer += data.replace(b"\r\n", b"\n")
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        continue
                    message = json.loads(data)
                    if "error" in message:
                        record.error = str(message["error"])
                    for choice in message.get("choices") or []:
                        text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                        if text:
                            now = time.perf_counter()
                            record.first = record.first or now
                            record.last = now
                            record.text += text
                            record.times.append(now)
                    if message.get("usage"):
                        record.tokens = message["usage"]["completion_tokens"]

        if len(status) < 2 or status[1] != "200":
            record.error = f"HTTP {' '.join(status[1:])}: {(await reader.read(2000)).decode(errors='replace')}"
            return record
        while True:
            if chunked:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    break
                feed(await reader.readexactly(size))
                await reader.readexactly(2)
            else:
                data = await reader.read(65536)
                if not data:
                    break
                feed(data)
        return record
    finally:
        writer.close()


async def run_level(host: str, port: int, bodies: list[tuple[str, dict]], clients: int) -> tuple[list[Record], float]:
    """``clients`` clients sending ``bodies`` one after another (client i: bodies i, i + clients, …)."""

    async def client(index: int) -> list[Record]:
        records = []
        for path, body in bodies[index::clients]:
            try:
                records.append(await asyncio.wait_for(stream_request(host, port, path, body), REQUEST_TIMEOUT))
            except (TimeoutError, OSError, ValueError) as exc:
                records.append(Record(sent=time.perf_counter(), error=f"{type(exc).__name__}: {exc}"))
        return records

    start = time.perf_counter()
    groups = await asyncio.gather(*(client(i) for i in range(clients)))
    return [r for group in groups for r in group], time.perf_counter() - start


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarize(records: list[Record], wall: float, tokenizer) -> dict:
    """The level's numbers; a request that ended without text (the model wrote EOS at once) counts as answered."""
    done = [r for r in records if r.error is None]
    for record in done:
        if not record.tokens and record.text and tokenizer is not None:  # a server that sent no usage
            record.tokens = len(tokenizer(record.text, add_special_tokens=False)["input_ids"])
    shown = [r for r in done if r.first is not None]
    ttft = [(r.first - r.sent) * 1000 for r in shown]
    itl = [(r.last - r.first) * 1000 / (r.tokens - 1) for r in shown if r.tokens > 1]
    tokens = sum(r.tokens for r in done)

    def ms(value):
        return None if value is None else round(value, 1)

    return {
        "requests": len(records),
        "errors": len(records) - len(done),
        "first_error": next((r.error for r in records if r.error), None),
        "without_text": len(done) - len(shown),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(done) / wall, 3),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 1),
        "ttft_ms_p50": ms(percentile(ttft, 50)),
        "ttft_ms_p99": ms(percentile(ttft, 99)),
        "itl_ms_p50": ms(percentile(itl, 50)),
        "itl_ms_p99": ms(percentile(itl, 99)),
        "itl_ms_mean": ms(statistics.fmean(itl)) if itl else None,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_command(kind: str, model: str, port: int, dtype: str, threads: int, transformers_python: str) -> list[str]:
    if kind == "decoders":
        return [sys.executable, "-m", "decoders.serve", "--model", model, "--port", str(port), "--dtype", dtype,
                "--threads", str(threads), "--max-rows", str(DECODERS_ROWS), "--queue", "256", "--served-model-name",
                "bench", "--log-level", "warning"]  # fmt: skip
    return [transformers_python, "-m", "transformers.cli.transformers", "serve", model, "--continuous-batching",
            *TRANSFORMERS_CB, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--log-level", "warning"]  # fmt: skip


def wait_ready(port: int, process: subprocess.Popen, seconds: float = 300) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not start in time")


def transformers_missing(python: str) -> str | None:
    """Why ``transformers serve`` cannot run with ``python`` (None: it can)."""
    probe = subprocess.run(
        [python, "-c", "from transformers.utils.import_utils import is_serve_available as a; import sys; sys.exit(0 if a() else 3)"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if probe.returncode == 3:
        return "transformers serve needs transformers[serving] (fastapi, accelerate, …), not installed for " + python
    return None if probe.returncode == 0 else probe.stderr.strip()[-500:]


def measure(
    host: str, port: int, model_name: str, levels: list[int], requests: int, max_tokens: int, tokenizer
) -> list[dict]:
    rows = []
    warm = make_bodies(2, model_name, 8, seed=99)
    asyncio.run(run_level(host, port, warm, 2))  # warm-up: first-call costs are not measured
    for clients in levels:
        bodies = make_bodies(max(requests, clients), model_name, max_tokens, seed=clients)
        records, wall = asyncio.run(run_level(host, port, bodies, clients))
        row = {"clients": clients, **summarize(records, wall, tokenizer)}
        print(f"  {clients:3d} clients: {row['requests_per_s']:7.2f} req/s {row['output_tokens_per_s']:8.1f} tok/s  TTFT p50 "
              f"{row['ttft_ms_p50']} p99 {row['ttft_ms_p99']} ms  ITL p50 {row['itl_ms_p50']} ms  errors {row['errors']}",
              flush=True)  # fmt: skip
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the embedded model's converted folder)")
    parser.add_argument(
        "--servers", nargs="+", default=["decoders", "transformers"], choices=["decoders", "transformers"]
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 4, 16, 32], help="concurrent clients")
    parser.add_argument("--requests", type=int, default=32, help="requests per level (at least one per client)")
    parser.add_argument(
        "--max-tokens", type=int, default=40, help="the most new tokens of a request (the least: 3/5 of it)"
    )
    parser.add_argument("--threads", type=int, default=1, help="the servers' torch threads (OMP_NUM_THREADS)")
    parser.add_argument(
        "--transformers-python", default=sys.executable, help="the interpreter that runs transformers serve"
    )
    parser.add_argument(
        "--url", help="measure a server already running at this loopback URL instead (with --model-name)"
    )
    parser.add_argument("--model-name", default="bench", help="with --url: the model id to send")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: levels 1 and 4, 4 requests, 6 tokens, float32"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "serve.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.requests, args.max_tokens, args.dtypes = [1, 4], 4, 6, ["float32"]

    from importlib.metadata import version

    report: dict = {
        "benchmark": "serve",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {version('torch')}, server threads {args.threads}",
        "load_average_before": os.getloadavg(),
        "settings": {
            "levels": args.levels,
            "requests_per_level": args.requests,
            "max_tokens": args.max_tokens,
            "decoders_max_rows": DECODERS_ROWS,
            "transformers_cb": " ".join(TRANSFORMERS_CB),
        },
        "results": [],
    }
    if args.url:
        from urllib.parse import urlsplit

        parts = urlsplit(args.url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            parser.error("--url must be a loopback address (127.0.0.1, localhost or ::1)")
        tokenizer = None  # the server's usage counts the tokens
        if args.model:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.model)
        rows = measure(
            parts.hostname, parts.port, args.model_name, args.levels, args.requests, args.max_tokens, tokenizer
        )
        report["results"].append({"server": args.url, "dtype": None, "levels": rows})
    else:
        from transformers import AutoTokenizer

        import decoders

        if args.model is None:
            decoders.load_model()  # converts the embedded model once, into the cache
            args.model = next(str(e.path) for e in decoders.cache_entries() if "embedded" in e.model)
        report["model"] = args.model
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        environment = {
            **os.environ,
            "OMP_NUM_THREADS": str(args.threads),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        for kind in args.servers:
            missing = transformers_missing(args.transformers_python) if kind == "transformers" else None
            for dtype in args.dtypes:
                entry = {"server": kind, "dtype": dtype}
                if missing:
                    print(f"{kind} {dtype}: skipped ({missing})", flush=True)
                    report["results"].append({**entry, "skipped": missing})
                    continue
                port = free_port()
                command = server_command(kind, args.model, port, dtype, args.threads, args.transformers_python)
                print(f"{kind} {dtype}: {' '.join(command)}", flush=True)
                process = subprocess.Popen(
                    command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                )
                try:
                    wait_ready(port, process)
                    model_name = "bench" if kind == "decoders" else args.model
                    entry["levels"] = measure(
                        "127.0.0.1", port, model_name, args.levels, args.requests, args.max_tokens, tokenizer
                    )
                except RuntimeError as exc:
                    entry["failed"] = str(exc)
                    print(f"  failed: {exc}", flush=True)
                finally:
                    process.terminate()
                    try:
                        process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
                report["results"].append(entry)
    report["load_average_after"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
