"""The ``decoders`` command line: generate, explain, compare, plugins, schema.

Every command takes ``--json`` for machine-readable output; errors are one clear line, never a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from decoders.errors import DecodersError
from decoders.plugins import get_registry
from decoders.strategy import Strategy

app = typer.Typer(
    name="decoders",
    help="Decoding strategies for causal language models, made explicit: generate, explain, compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
error_console = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def emit_json(data: object) -> None:
    """Print ``data`` as JSON on standard output (UTF-8, not escaped)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


@app.command()
def plugins(as_json: JsonOption = False) -> None:
    """List every processor and selector kind, with the plugin that provides it."""
    registry = get_registry()
    rows = [
        {"kind": r.kind, "role": r.role, "plugin": r.plugin, "description": r.config.describe()}
        for table in (registry.processors, registry.selectors)
        for r in table.values()
    ]
    if as_json:
        emit_json({"kinds": rows, "plugins": registry.plugins, "problems": registry.problems})
        return
    table = Table(title="decoders kinds", title_justify="left")
    for column in ("kind", "role", "plugin", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["kind"], row["role"], row["plugin"], row["description"])
    console.print(table)
    for problem in registry.problems:
        error_console.print(f"[yellow]warning:[/] {problem}", highlight=False)


@app.command()
def schema(
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write the schema to this file.")] = None,
) -> None:
    """Print the JSON Schema of strategy files (every registered kind, plugins included)."""
    text = json.dumps(Strategy.json_schema(), indent=2) + "\n"
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
        error_console.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


def main() -> None:
    """Entry point of the ``decoders`` console script: clear one-line errors for expected failures."""
    try:
        app()
    except DecodersError as exc:
        error_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise SystemExit(2) from None
