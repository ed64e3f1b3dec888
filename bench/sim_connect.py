"""Benchmark: how fast `outpost sim` connects N devices and how much memory it holds.

For each N, on a fresh Mosquitto (deploy.local, free port, temp dir):

- baseline: N bare aiomqtt clients (MQTT v5, same ramp concurrency, no will, no
  messages) in one process: time until every CONNACK, RSS;
- sim: ``outpost sim --devices N --duration 2`` as a user would run it: time until every
  device is connected (each with its will, clean start 0, session expiry, presence and
  state published), RSS.
- will storm: the same fleet through the library, all N dropped abruptly (socket shut,
  no DISCONNECT); time until a backend subscriber has all N retained wills.

Every case runs in its own process so RSS is that case's alone. Appends a section to
bench/RESULTS.md with the ratios sim/baseline.

    .venv/bin/python bench/sim_connect.py --devices 2000 --devices 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONCURRENCY = 64


@contextmanager
def fresh_broker() -> Iterator[object]:
    from deploy.local import Mosquitto, free_port

    root = Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    root.chmod(0o755)
    broker = Mosquitto(root / "mosquitto", free_port(), backend_password=secrets.token_urlsafe(12))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def broker_env(broker: object) -> dict[str, str]:
    return {
        **os.environ,
        "OUTPOST_MQTT_URL": broker.url,  # type: ignore[attr-defined]
        "OUTPOST_MQTT_USERNAME": broker.backend_username,  # type: ignore[attr-defined]
        "OUTPOST_MQTT_PASSWORD": broker.backend_password,
    }  # type: ignore[attr-defined]


def run_child(mode: str, devices: int, broker: object) -> dict[str, float]:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    if mode == "sim":
        argv = [
            str(REPO / ".venv/bin/outpost"),
            "sim",
            "--devices",
            str(devices),
            "--prefix",
            f"b{secrets.token_hex(3)}",
            "--duration",
            "2",
            "--connect-concurrency",
            str(CONCURRENCY),
            "--summary-json",
            str(out),
        ]
    else:
        argv = [sys.executable, __file__, f"--child-{mode}", str(devices), str(out)]
    started = time.monotonic()
    subprocess.run(
        argv,
        env=broker_env(broker),
        cwd=tempfile.gettempdir(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=600,
    )
    result = json.loads(out.read_text())
    result["wall_s"] = time.monotonic() - started
    out.unlink()
    return result


# ----------------------------------------------------------------------- child processes


async def baseline(devices: int) -> dict[str, float]:
    import aiomqtt

    from device.sim.cli import raise_open_files_limit
    from device.sim.report import rss_mb

    raise_open_files_limit(devices * 2 + 256)
    url = os.environ["OUTPOST_MQTT_URL"].rsplit(":", 1)
    slots = asyncio.Semaphore(CONCURRENCY)
    clients: list[aiomqtt.Client] = []

    async def one(i: int) -> None:
        client = aiomqtt.Client(
            "127.0.0.1",
            int(url[1]),
            username=os.environ["OUTPOST_MQTT_USERNAME"],
            password=os.environ["OUTPOST_MQTT_PASSWORD"],
            identifier=f"base-{i:06d}",
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=30,
        )
        async with slots:
            await client.__aenter__()
        clients.append(client)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(devices)))
    connect_s = time.monotonic() - started
    rss, peak = rss_mb()
    await asyncio.gather(*(c.__aexit__(None, None, None) for c in clients))
    return {"connect_s": connect_s, "rss_mib": rss, "peak_rss_mib": peak}


async def will_storm(devices: int) -> dict[str, float]:
    import logging

    import aiomqtt

    from device.sim import Broker, Fleet, FleetOptions
    from device.sim.cli import raise_open_files_limit
    from device.sim.report import rss_mb

    raise_open_files_limit(devices * 2 + 256)
    port = int(os.environ["OUTPOST_MQTT_URL"].rsplit(":", 1)[1])
    user, password = os.environ["OUTPOST_MQTT_USERNAME"], os.environ["OUTPOST_MQTT_PASSWORD"]
    prefix = f"w{secrets.token_hex(3)}"
    wills: set[str] = set()
    all_in = asyncio.Event()
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        username=user,
        password=password,
        identifier=f"bench-watch-{prefix}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as watcher:
        await watcher.subscribe("devices/+/presence", qos=1)

        async def watch() -> None:
            async for message in watcher.messages:
                raw = message.payload if isinstance(message.payload, bytes) else b"{}"
                data = json.loads(raw)
                if data.get("reason") == "connection_lost":
                    wills.add(data["device_id"])
                    if len(wills) == devices:
                        all_in.set()

        reader = asyncio.create_task(watch(), name="bench-watch")
        options = FleetOptions(
            devices=devices, prefix=prefix, state_interval=0, connect_concurrency=CONCURRENCY
        )
        async with Fleet(
            options, Broker("127.0.0.1", port, user, password), logging.getLogger("bench")
        ) as fleet:
            async with asyncio.timeout(300):
                await fleet.wait_connected()
            rss, peak = rss_mb()
            started = time.monotonic()
            async with asyncio.timeout(300):
                await fleet.drop_all_abruptly()
                dropped_s = time.monotonic() - started
                await all_in.wait()
            storm_s = time.monotonic() - started
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return {
        "drop_s": dropped_s,
        "wills_s": storm_s,
        "wills": len(wills),
        "rss_mib": rss,
        "peak_rss_mib": peak,
    }


# ----------------------------------------------------------------------------- reporting


def machine() -> str:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    mosquitto = subprocess.run(
        ["mosquitto", "-h"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    return (
        f"{os.cpu_count()} CPUs, {mem_kb / 1024 / 1024:.1f} GiB RAM, "
        f"{platform.platform()}, Python {platform.python_version()}, "
        f"{(mosquitto or ['mosquitto ?'])[0].strip()}"
    )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(rows: list[dict[str, Any]], command: str, load_before: str) -> str:
    lines = [
        "",
        f"## Simulator connect time and memory ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()} (shared with other engineers' work)",
        f"- load average (1/5/15 min) before: {load_before}; after: {load_average()}",
        f"- ramp: {CONCURRENCY} CONNECTs in flight; fresh Mosquitto per case; one process per case",
        "- baseline: bare aiomqtt clients (MQTT v5, no will, no messages, same ramp)",
        "- sim: `outpost sim --devices N --duration 2` (will, clean start 0, session expiry, "
        "retained presence + state per device)",
        "- will storm: the same fleet via `Fleet`, `drop_all_abruptly()`, until a subscriber "
        "has all N wills",
        "",
        "| devices | baseline connect s | sim connect s | sim/baseline | baseline RSS MiB "
        "| sim RSS MiB | sim/baseline RSS | sim KiB/device | drop all s | all wills in s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base, sim, storm, n = row["baseline"], row["sim"], row["storm"], row["devices"]
        lines.append(
            f"| {n:,} | {base['connect_s']:.2f} | {sim['connect_s']:.2f} "
            f"| {sim['connect_s'] / base['connect_s']:.2f} | {base['peak_rss_mib']:.0f} "
            f"| {sim['peak_rss_mib']:.0f} | {sim['peak_rss_mib'] / base['peak_rss_mib']:.2f} "
            f"| {sim['peak_rss_mib'] * 1024 / n:.0f} | {storm['drop_s']:.2f} "
            f"| {storm['wills_s']:.2f} ({storm['wills']:,} wills) |"
        )
    lines += [
        "",
        '"sim connect s" runs until the last device has its CONNACK; each device publishes '
        "retained presence and a state and subscribes right after its CONNACK, competing "
        "with the ramp (the baseline only connects). "
        "`outpost sim` RSS includes the imports of the whole `outpost` command.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, action="append")
    parser.add_argument("--child-baseline", nargs=2)
    parser.add_argument("--child-storm", nargs=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    for mode, child in (("baseline", args.child_baseline), ("storm", args.child_storm)):
        if child:
            run = baseline if mode == "baseline" else will_storm
            Path(child[1]).write_text(json.dumps(asyncio.run(run(int(child[0])))))
            return
    load_before = load_average()
    rows: list[dict[str, Any]] = []
    for n in args.devices or [2000, 5000]:
        row: dict[str, Any] = {"devices": n}
        for mode in ("baseline", "sim", "storm"):
            with fresh_broker() as broker:
                row[mode] = run_child(mode, n, broker)
            print(n, mode, row[mode], flush=True)
        rows.append(row)
    command = "python bench/sim_connect.py " + " ".join(
        f"--devices {n}" for n in (args.devices or [2000, 5000])
    )
    text = report(rows, command, load_before)
    print(text)
    if not args.no_write:
        with (REPO / "bench" / "RESULTS.md").open("a") as results:
            results.write(text)


if __name__ == "__main__":
    main()
