"""``outpost sim``: run a simulated fleet against the broker in OUTPOST_SIM_*."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from device.settings import SimSettings
from device.sim.fleet import Broker, Fleet, FleetOptions
from device.sim.provision import provision_fleet, serials
from device.sim.report import Summary, live_table, summarize
from outpost import logs
from outpost.settings import SettingsError, load
from schemas.topics import is_device_id

__all__ = ["raise_open_files_limit", "sim"]


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


async def _run(
    options: FleetOptions, broker: Broker, duration: float | None, console: Console
) -> Summary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Fleet(options, broker, logging.getLogger("outpost.sim")) as fleet:
        with Live(
            live_table(fleet), console=console, refresh_per_second=2, transient=False
        ) as live:

            async def refresh() -> None:
                while True:
                    live.update(live_table(fleet))
                    await asyncio.sleep(0.5)

            async def run_for() -> None:
                await fleet.wait_connected()
                if duration is not None:
                    await asyncio.sleep(duration)
                    stop.set()

            tasks = [
                asyncio.create_task(refresh(), name="sim-refresh"),
                asyncio.create_task(run_for(), name="sim-timer"),
            ]
            await stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            summary = summarize(fleet)  # before the goodbyes: the numbers of the run
            live.update(live_table(fleet, title="outpost sim: summary"))
    return summary


def sim(
    devices: Annotated[int, typer.Option(min=1, help="Number of simulated devices")] = 100,
    prefix: Annotated[str, typer.Option(help="Device ids: <prefix>-000000, -000001, ...")] = "sim",
    state_interval: Annotated[
        float,
        typer.Option(min=0, help="Seconds between periodic states per device (0: only on change)"),
    ] = 60.0,
    fail_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of upgrade jobs that fail")
    ] = 0.0,
    download_rate: Annotated[
        float, typer.Option(min=0, help="Download speed per device, bytes/s (0: unlimited)")
    ] = 0.0,
    churn_per_min: Annotated[
        float,
        typer.Option(min=0, help="Share of online devices dropped per minute (they come back)"),
    ] = 0.0,
    abrupt_share: Annotated[
        float,
        typer.Option(min=0, max=1, help="Share of churn drops without DISCONNECT (the will fires)"),
    ] = 0.5,
    connect_concurrency: Annotated[int, typer.Option(min=1, help="CONNECTs in flight")] = 64,
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds to keep running once all are connected (default: until Ctrl-C)"),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (reproducible churn)")] = None,
    summary_json: Annotated[Path | None, typer.Option(help="Also write the summary here")] = None,
    claim: Annotated[
        str | None,
        typer.Option(
            help="Start out of the box: each device holds only this claim secret (or "
            "OUTPOST_SIM_CLAIM) and its serial, and provisions its own account first"
        ),
    ] = None,
    serial_prefix: Annotated[
        str, typer.Option(help="With --claim: serials <prefix>-000000, -000001, ...")
    ] = "SN",
) -> None:
    """Run thousands of simulated devices that behave like the reference agent."""
    logs.configure("WARNING")
    try:
        where = load(SimSettings)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise_open_files_limit(devices * 2 + 256)
    options = FleetOptions(
        devices=devices,
        prefix=prefix,
        state_interval=state_interval,
        fail_rate=fail_rate,
        download_rate=download_rate or None,
        churn_per_min=churn_per_min,
        abrupt_share=abrupt_share,
        connect_concurrency=connect_concurrency,
        seed=seed,
        firmware_key=where.firmware_key,
    )
    if not is_device_id(options.device_id(0)):
        raise typer.BadParameter(f"--prefix {prefix!r} does not make valid device ids")
    console = Console(stderr=True)
    broker = Broker.from_settings(where)
    secret = claim or (where.claim.get_secret_value() if where.claim else None)
    if secret is not None:
        batch = serials(serial_prefix, devices)
        done = asyncio.run(
            provision_fleet(broker, secret, batch, logger=logging.getLogger("outpost.sim"))
        )
        console.print(f"provisioned {len(done.identities)} devices in {done.seconds:.2f} s")
        options.ids, broker = done.ids, done.fleet_broker(broker)
        keys = [i.firmware_public_key for i in done.identities.values()]
        options.firmware_key = options.firmware_key or next((k for k in keys if k), None)
    summary = asyncio.run(_run(options, broker, duration, console))
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary.as_dict(), indent=1))
