"""The ``outpost`` command: one sub-command per service, ``dev`` for the local stack,
``settings`` for every ``OUTPOST_*`` variable, ``status`` for the ops view."""

from __future__ import annotations

import typer

from api.cli import admin_app, api_app
from bridge.cli import app as bridge_app
from cli.settings import settings
from cli.status import status
from deploy.local.cli import app as dev_app
from device.sim.cli import sim
from scheduler.cli import scheduler
from schemas.cli import app as schemas_app

app = typer.Typer(
    help="Outpost: an MQTT backend for fleets of network devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev_app, name="dev")
app.command("scheduler")(scheduler)
app.command("sim")(sim)
app.add_typer(schemas_app, name="schemas")
app.add_typer(bridge_app, name="bridge")
app.add_typer(api_app, name="api")
app.add_typer(admin_app, name="admin")
app.command("settings")(settings)
app.command("status")(status)


def main() -> None:
    app()
