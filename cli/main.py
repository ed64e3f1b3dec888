"""The ``outpost`` command: one sub-command per service, ``dev`` for the local stack,
``settings`` for every ``OUTPOST_*`` variable, ``status`` for the ops view.

A sub-command's package is imported only when that sub-command runs: a service process
imports its own code, not every other service's (``import`` of all of them took 2.7 s of
the start of every ``outpost bridge``, ``outpost scheduler`` or ``outpost sim``; the
bridge's own takes 1.3 s). ``outpost --help`` imports them all to list them.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

# name: (module, attribute, a group of commands or one command), in the order of --help
SUBCOMMANDS: dict[str, tuple[str, str, bool]] = {
    "dev": ("deploy.local.cli", "app", True),
    "scheduler": ("scheduler.cli", "scheduler", False),
    "sim": ("device.sim.cli", "sim", False),
    "schemas": ("schemas.cli", "app", True),
    "bridge": ("bridge.cli", "app", True),
    "api": ("api.cli", "api_app", True),
    "admin": ("api.cli", "admin_app", True),
    "settings": ("cli.settings", "settings", False),
    "status": ("cli.status", "status", False),
}


def build(only: str | None = None) -> typer.Typer:
    """The command line with every sub-command, or with ``only`` that one."""
    app = typer.Typer(
        help="Outpost: an MQTT backend for fleets of network devices.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def outpost() -> None:
        # a group even when it holds one command: `outpost sim --devices 3` stays that
        pass

    for name, (module, attribute, group) in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        found = getattr(importlib.import_module(module), attribute)
        if group:
            app.add_typer(found, name=name)
        else:
            app.command(name)(found)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole command line, e.g. for typer.testing.CliRunner
        return build()
    raise AttributeError(name)


def main() -> None:
    wanted = sys.argv[1] if len(sys.argv) > 1 else None
    build(wanted if wanted in SUBCOMMANDS else None)()
