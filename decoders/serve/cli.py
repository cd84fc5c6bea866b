"""``decoders serve``: the OpenAI-compatible server on one model (see :mod:`decoders.serve.app`).

Registered on the ``decoders`` command line by ``decoders/cli.py``; also runs as ``python -m decoders.serve``.
Imports no server library until it runs, so the command line works without the ``serve`` extra.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from decoders.errors import DecodersError

DTYPES = ("float32", "bfloat16")


def serve(
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Hub id, local folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="DECODERS_API_KEY",
            help="Require 'Authorization: Bearer KEY' on /v1/* (or set DECODERS_API_KEY).",
        ),
    ] = None,
    max_rows: Annotated[
        int,
        typer.Option("--max-rows", min=1, help="Most batch rows generating at once (a beam search takes num_beams)."),
    ] = 16,
    queue: Annotated[
        int,
        typer.Option(
            "--queue", min=0, help="Most requests waiting for rows; beyond it a request gets 429 (see --queue-full)."
        ),
    ] = 64,
    queue_full: Annotated[
        str,
        typer.Option(
            "--queue-full", help="When the queue is full: reject (429 Too Many Requests) or wait (hold the request)."
        ),
    ] = "reject",
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=1,
            help="torch's CPU threads. Default 1: measured on a 2-core machine, torch with 2 threads ran ~10x slower "
            "while another process kept a core busy; raise it on a machine with idle cores.",
        ),
    ] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="Weights' dtype: float32 or bfloat16.")] = "float32",
    served_model_name: Annotated[
        str | None, typer.Option("--served-model-name", help="The model id clients name (default: the model's name).")
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="uvicorn's log level (info logs every request).")
    ] = "info",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models,
    /health, /metrics), every request sharing the engine's forward passes."""
    if dtype not in DTYPES:
        raise DecodersError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    if queue_full not in ("reject", "wait"):
        raise DecodersError(f"--queue-full must be reject or wait, got {queue_full!r}")
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise DecodersError(
            f"decoders serve needs the serve extra ({exc.name} is missing): pip install 'decoders-lab[serve]'"
        ) from None
    import torch

    import decoders
    from decoders.serve.app import create_app

    torch.set_num_threads(threads)
    sys.stderr.write(f"loading {model or 'the embedded model'}…\n")
    loaded = decoders.load_model(model, dtype=getattr(torch, dtype))
    app = create_app(
        loaded, model_name=served_model_name, api_key=api_key, max_rows=max_rows, queue=queue, queue_full=queue_full
    )
    name = app.state.server.model_name
    sys.stderr.write(
        f"serving {name} on http://{host}:{port}/v1 ({max_rows} rows, queue {queue} ({queue_full}), {threads} thread"
        f"{'s' * (threads != 1)}, {dtype}{', API key required' if api_key else ''})\n"
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def main(argv: list[str] | None = None) -> None:
    """``python -m decoders.serve``: the command alone, with the CLI's one-line errors."""
    from pydantic import ValidationError

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command()(serve)
    try:
        typer.main.get_command(app)(args=argv, prog_name="decoders serve")
    except (DecodersError, ValidationError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
