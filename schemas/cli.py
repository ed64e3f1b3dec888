"""``outpost schemas``: documents generated from the protocol models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from schemas.asyncapi import DOCUMENT_PATH, is_current, render

app = typer.Typer(no_args_is_help=True)


@app.callback()
def schemas() -> None:
    """Protocol schemas and the documents built from them."""


@app.command()
def asyncapi(
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only check that the file is up to date; exit 1 if it is stale."
        ),
    ] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the document lives.")] = (
        DOCUMENT_PATH
    ),
) -> None:
    """Write (or check) the AsyncAPI 3.0 document of the device protocol."""
    if check:
        if not is_current(output):
            typer.echo(f"{output} is stale: run `outpost schemas asyncapi`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{output} is up to date")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(), encoding="utf-8")
    typer.echo(f"wrote {output}")
