"""``outpost dev``: bring the local stack up, down, or show its status."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table

from deploy.local import demo, tools
from deploy.local.errors import LocalStackError
from deploy.local.servers import Server
from deploy.local.stack import DevSettings, Stack

app = typer.Typer(
    help="The local development stack (Mosquitto, MongoDB/FerretDB, S3, Prometheus).",
    no_args_is_help=True,
)
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
    """Install the server binaries: Mosquitto, PostgreSQL and Prometheus from apt, FerretDB
    and versitygw from Go (PostgreSQL and FerretDB are skipped with OUTPOST_MONGO_URL)."""
    mosquitto = _step("Installing Mosquitto (apt)", tools.mosquitto)
    console.print(f"mosquitto  {mosquitto}")
    clients = _step("Installing mosquitto-clients, jq and ping (apt)", tools.shell_device_tools)
    console.print(f"shell      {' '.join(clients)}")
    if os.environ.get("OUTPOST_MONGO_URL"):
        console.print("mongodb    OUTPOST_MONGO_URL is set: no FerretDB needed")
    else:
        postgres = _step("Installing PostgreSQL (apt)", tools.postgres_bindir)
        console.print(f"postgres   {postgres}")
        ferretdb = _step(
            f"Building FerretDB {tools.FERRETDB_VERSION} (first time: minutes)", tools.ferretdb
        )
        console.print(f"ferretdb   {ferretdb}")
    versitygw = _step(
        f"Building versitygw {tools.VERSITYGW_VERSION} (first time: minutes)", tools.versitygw
    )
    console.print(f"versitygw  {versitygw}")
    prometheus = _step("Installing Prometheus (apt)", tools.prometheus)
    console.print(f"prometheus {prometheus}")


@app.command()
def up(
    services: bool = typer.Option(True, help="Also run bridge, api and scheduler"),
    demo: bool = typer.Option(True, help="Also register and simulate demo devices"),
) -> None:
    """Start the whole backend (idempotent) and show it working with simulated devices.

    Writes .outpost/dev.env, which every other ``outpost`` command reads.
    """
    install()
    stack = Stack(DevSettings())
    _start_all(stack.servers())
    stack.write_env(stack.env_file)
    console.print(f"settings written to {stack.env_file}")
    if services:
        _start_together(list(stack.services()))
        if demo and stack.demo_devices:
            _demo(stack)
    status()


def _start_all(servers: Iterable[Server]) -> None:
    for server in servers:
        _started(server, _step(f"Starting {server.name} on port {server.port}", server.start))


def _start_together(servers: list[Server]) -> None:
    """Start ``servers`` at the same time (they need only the infrastructure, not each
    other): each of our services spends seconds importing before it answers."""
    names = ", ".join(s.name for s in servers)
    with ThreadPoolExecutor(len(servers)) as pool:
        starting = [pool.submit(server.start) for server in servers]
        done = _step(f"Starting {names}", lambda: [f.result() for f in starting])
    for server, started in zip(servers, done, strict=True):
        _started(server, started)


def _started(server: Server, started: bool) -> None:
    verb = "started" if started else "already running"
    console.print(f"[green]✓[/green] {server.name} {verb} (port {server.port})")


def _demo(stack: Stack) -> None:
    env = {**os.environ, **stack.env()}
    token = _step(
        "Creating the demo tenant and its admin token",
        lambda: demo.admin_token(stack.root, env, stack.api_url),
    )
    api = demo.Api(stack.api_url, token)
    ids = demo.device_ids("demo", stack.demo_devices)
    new = _step(
        f"Registering {len(ids)} demo devices", lambda: demo.register(api, ids, stack.sim_accounts)
    )
    console.print(f"[green]✓[/green] {new} devices registered ({len(ids) - new} already were)")
    stack.sim.start()
    online = _step(
        f"Waiting for {len(ids)} simulated devices to come online",
        lambda: demo.wait_online(api, len(ids)),
    )
    table = Table("device", "presence", "firmware", "config", title="devices, via the api")
    for device in online[:5]:
        table.add_row(
            device["id"],
            str(device.get("presence", {}).get("status")),
            str((device.get("state") or {}).get("firmware")),
            str(device.get("config_sync", device.get("sync", ""))),
        )
    Console().print(table)
    console.print(
        f"[green]✓[/green] {len(online)} simulated devices online in MongoDB, written by the "
        f"bridge from their MQTT presence.\n  Try: curl -H 'Authorization: Bearer "
        f"$(cat {stack.root / 'demo-token'})' {stack.api_url}/devices | python3 -m json.tool"
        f"\n  API docs: {stack.api_url}/docs"
    )


@app.command()
def down() -> None:
    """Stop exactly the processes `up` started (by their PID files)."""
    stack = Stack(DevSettings())
    ours = [stack.sim, *reversed(list(stack.services()))]
    theirs = list(reversed(list(stack.servers())))  # after ours, one by one
    with ThreadPoolExecutor(len(ours)) as pool:  # each may take seconds to flush and leave
        stopped = list(pool.map(lambda server: server.stop(), ours))
    stopped += [server.stop() for server in theirs]
    for server, was in zip([*ours, *theirs], stopped, strict=True):
        console.print(f"{server.name}: {'stopped' if was else 'was not running'}")


@app.command()
def status() -> None:
    """Show each server's PID, port and whether it answers."""
    stack = Stack(DevSettings())
    table = Table("server", "pid", "port", "status")
    rows = stack.status()
    for row in rows:
        colour = "green" if row.healthy else ("red" if not row.ok else "dim")
        table.add_row(
            row.name,
            str(row.pid or "-"),
            str(row.port or "-"),
            f"[{colour}]{row.detail}[/{colour}]",
        )
    Console().print(table)
    if not all(row.ok for row in rows):
        raise typer.Exit(1)
