"""``outpost scheduler``: run one scheduler instance until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

import typer

from outpost import logs
from outpost.settings import HttpSettings, MongoSettings, MqttSettings, S3Settings, load
from scheduler.config import SchedulerSettings
from scheduler.notify import SmtpSettings
from scheduler.service import SchedulerService, Settings


def scheduler(log_level: str = typer.Option("INFO", help="Log level")) -> None:
    """Run rollouts, broker metrics and the other periodic jobs (several may run)."""
    logs.configure(log_level)
    settings = Settings(
        load(MqttSettings),
        load(MongoSettings),
        load(S3Settings),
        load(HttpSettings),
        load(SchedulerSettings),
        load(SmtpSettings),
    )
    asyncio.run(_main(settings, logging.getLogger("outpost.scheduler")))


async def _main(settings: Settings, logger: logging.Logger) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await SchedulerService(settings, logger).run(stop)
