"""``outpost dev``: bring the local stack up, down, or show its status."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table

from deploy.local import tools
from deploy.local.errors import LocalStackError
from deploy.local.stack import DevSettings, Stack

app = typer.Typer(help="The local development stack (Mosquitto, MongoDB/FerretDB, S3).",
                  no_args_is_help=True)
console = Console(stderr=True)
T = TypeVar("T")


def _step(what: str, action: Callable[[], T]) -> T:
    """Run one step under a spinner; a LocalStackError becomes one red line and exit 1."""
    try:
        with console.status(what):
            return action()
    except LocalStackError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def install() -> None:
    """Install the server binaries (Mosquitto from apt, FerretDB and versitygw from Go)."""
    mosquitto = _step("Installing Mosquitto (apt)", tools.mosquitto)
    console.print(f"mosquitto  {mosquitto}")
    if tools.mongod():
        console.print(f"mongod     {tools.mongod()}")
    else:
        ferretdb = _step(f"Building FerretDB {tools.FERRETDB_VERSION} (first time: minutes)",
                         tools.ferretdb)
        console.print(f"ferretdb   {ferretdb}")
    versitygw = _step(f"Building versitygw {tools.VERSITYGW_VERSION} (first time: minutes)",
                      tools.versitygw)
    console.print(f"versitygw  {versitygw}")


@app.command()
def up() -> None:
    """Start every server (idempotent) and write .outpost/dev.env for the other commands."""
    install()
    stack = Stack(DevSettings())
    for server in stack.servers():
        started = _step(f"Starting {server.name} on port {server.port}", server.start)
        verb = "started" if started else "already running"
        console.print(f"[green]✓[/green] {server.name} {verb} (port {server.port})")
    stack.write_env(stack.root / "dev.env")
    console.print(f"settings written to {stack.root / 'dev.env'}")
    status()


@app.command()
def down() -> None:
    """Stop exactly the processes `up` started (by their PID files)."""
    stack = Stack(DevSettings())
    for server in reversed(list(stack.servers())):
        stopped = server.stop()
        console.print(f"{server.name}: {'stopped' if stopped else 'was not running'}")


@app.command()
def status() -> None:
    """Show each server's PID, port and whether it answers."""
    stack = Stack(DevSettings())
    table = Table("server", "pid", "port", "status")
    rows = stack.status()
    for row in rows:
        colour = "green" if row.healthy else "red"
        table.add_row(row.name, str(row.pid or "-"), str(row.port),
                      f"[{colour}]{row.detail}[/{colour}]")
    Console().print(table)
    if not all(row.healthy for row in rows):
        raise typer.Exit(1)
