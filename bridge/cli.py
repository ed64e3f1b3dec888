"""``outpost bridge`` (run) and ``outpost bridge resync``."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import typer

from bridge.app import Settings, run_bridge, run_resync
from bridge.config import BridgeSettings
from bridge.errors import BridgeError
from outpost import logs
from outpost.settings import HttpSettings, MongoSettings, MqttSettings, SettingsError, load

app = typer.Typer(
    help="MQTT → MongoDB: presence, state, config acks, job progress.",
    pretty_exceptions_enable=False,
)

_LOG = logging.getLogger("outpost.bridge")


def _settings() -> Settings:
    try:
        return Settings(
            mqtt=load(MqttSettings),
            mongo=load(MongoSettings),
            bridge=load(BridgeSettings),
            http=load(HttpSettings),
        )
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    log_level: str | None = typer.Option(None, help="Log level (default: OUTPOST_LOG_LEVEL, INFO)"),
) -> None:
    """Without a sub-command: run the bridge until SIGTERM."""
    logs.configure(log_level)
    if ctx.invoked_subcommand is None:
        run()


@app.command()
def run() -> None:
    """Run the bridge until SIGTERM (then flush, acknowledge and leave)."""
    settings = _settings()
    try:
        asyncio.run(run_bridge(settings, _LOG))
    except BridgeError as exc:
        _LOG.error("bridge failed", extra={"error": str(exc)})
        raise typer.Exit(1) from None


@app.command()
def resync(
    idle: float = typer.Option(2.0, help="Stop after this many seconds without a message"),
) -> None:
    """Rebuild every device's presence from the broker's retained presence messages."""
    settings = _settings()
    try:
        result = asyncio.run(run_resync(settings, _LOG, idle_s=idle))
    except BridgeError as exc:
        _LOG.error("resync failed", extra={"error": str(exc)})
        raise typer.Exit(1) from None
    sys.stdout.write(json.dumps(result) + "\n")
