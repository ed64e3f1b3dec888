"""The ``outpost`` command: one sub-command per service, plus ``dev`` for the local stack."""

from __future__ import annotations

import typer

from deploy.local.cli import app as dev_app

app = typer.Typer(help="Outpost: an MQTT backend for fleets of network devices.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(dev_app, name="dev")


def main() -> None:
    app()
