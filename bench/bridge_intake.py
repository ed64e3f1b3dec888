"""The bridge's intake cost per message, without a database: CPU of this process.

    PYTHONPATH=. .venv/bin/python bench/bridge_intake.py [--messages 20000] [--profile]

A fresh Mosquitto; the benchmark's packet publisher (its own process) publishes a round
of one state per device, and this process takes it in two ways, each for three rounds:

- **source**: the bridge's MQTT source alone (paho on the event loop, ``Inbound`` on a
  queue), each message acknowledged as it is taken: what receiving costs;
- **bridge**: the whole bridge loop (decode, batch, plan hand-off, ack in order, metrics)
  with a writer that stores nothing: what the bridge adds before and after its writes.

The timer starts before the round is published, so the whole round is counted. With
``--profile``, the last bridge round runs under cProfile and the top functions are
printed. On FerretDB a round's database work takes ~30 s at 20,000 devices; whatever this
measures runs on the same thread as that work (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import pstats
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.bridge_ingest import Publishing
from bridge.decode import Accepted, Rejection
from bridge.metrics import BridgeMetrics
from bridge.mongo_sink import WriteCounts
from bridge.mqtt_source import MqttSource, SessionOptions
from bridge.service import Bridge, Writer
from deploy.local import Mosquitto, free_port
from outpost.gc_tuning import tune_gc
from outpost.settings import MqttSettings
from tests.integration.bridge.helpers import settings

LOG = logging.getLogger("bench")
TOPIC = "$share/intake/devices/+/state"


class NullWriter(Writer):
    """Counts what it is given and stores nothing; :attr:`done` once ``want`` came."""

    def expect(self, want: int) -> asyncio.Event:
        self.taken, self.want, self.done = 0, want, asyncio.Event()
        return self.done

    async def write(self, batch: Sequence[Accepted | Rejection]) -> WriteCounts:
        self.taken += len(batch)
        if self.taken >= self.want:
            self.done.set()
        return WriteCounts()


def source(mqtt: MqttSettings) -> MqttSource:
    session = SessionOptions("bench-intake", (TOPIC,), receive_maximum=65_535, session_expiry_s=600)
    return MqttSource(mqtt, session, logger=LOG)


async def source_round(mqtt: MqttSettings, pub: Publishing, n: int, seq: int) -> float:
    """CPU seconds per message: receive and acknowledge, nothing else."""
    async with source(mqtt) as src:
        started = time.process_time()
        pub.round(7, seq)
        for _ in range(n):
            item = await src.messages.get()
            assert item is not None
            src.ack(item)
        return (time.process_time() - started) / n


async def bridge_round(
    mqtt: MqttSettings, pub: Publishing, n: int, seq: int, profile: bool
) -> float:
    """CPU seconds per message of the bridge loop with a writer that stores nothing."""
    async with source(mqtt) as src:
        writer = NullWriter(
            sink=None,  # type: ignore[arg-type]
            devices=None,  # type: ignore[arg-type]
            executions=None,  # type: ignore[arg-type]
            metrics=BridgeMetrics(),
            logger=LOG,
        )
        done = writer.expect(n)
        bridge = Bridge(src, writer, batch_max=20_000, flush_s=0.005, gather_s=0.5)
        running = asyncio.create_task(bridge.run())
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        started = time.process_time()
        pub.round(7, seq)
        await done.wait()
        spent = (time.process_time() - started) / n
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        bridge.stop()
        await running
        return spent


async def main(args: argparse.Namespace) -> None:
    tune_gc()  # as the bridge process does
    root = Path(tempfile.mkdtemp(prefix="outpost-intake-"))
    os.chmod(root, 0o755)  # Mosquitto drops to its own user, which must reach its folder
    broker = Mosquitto(root / "mqtt", free_port(), backend_password=secrets.token_urlsafe(12))
    broker.start()
    pub = Publishing(broker, args.messages)
    try:
        mqtt = settings(broker, "mongodb://127.0.0.1:1", "unused", "intake").mqtt
        async with source(mqtt):
            pass  # the shared subscription exists before the first round is published
        seq = 1
        rows: dict[str, list[float]] = {"source": [], "bridge": []}
        for r in range(3):
            seq += 1
            rows["source"].append(await source_round(mqtt, pub, args.messages, seq))
            seq += 1
            profile = args.profile and r == 2
            rows["bridge"].append(await bridge_round(mqtt, pub, args.messages, seq, profile))
        for name, values in rows.items():
            shown = ", ".join(f"{v * 1e6:.0f}" for v in values)
            median = statistics.median(values) * 1e6
            sys.stdout.write(f"{name}: {median:.0f} µs CPU a message (rounds: {shown})\n")
    finally:
        pub.close()
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(parser.parse_args()))
