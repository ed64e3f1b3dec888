"""Bridge benchmark: connect storm, then a state flood drained by the bridge, next to
(a) null subscribers (paho manual ack, paho auto ack, aiomqtt) draining the same
backlog from the same broker and (b) the equivalent raw conditional ``bulk_write``.

Every consumer drains a *backlog*: it creates its persistent session, goes away, the
flood is published into the session, and the clock runs from reconnect to the last
message. So the publisher's speed is out of the measurement. The raw baseline runs right
before and right after the bridge; the ratios use their mean.

    PYTHONPATH=. .venv/bin/python bench/bridge_ingest.py --devices 5000 --rounds 3

Starts its own Mosquitto and MongoDB/FerretDB on free loopback ports (as the tests do).
Not a test; results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pymongo import AsyncMongoClient, UpdateOne

from bridge.app import Running, run_bridge
from bridge.config import BridgeSettings
from bridge.metrics import BridgeMetrics
from deploy.local import MongoServer, Mosquitto, free_port
from outpost import mongo as outpost_mongo
from tests.integration.bridge.helpers import (
    Publisher,
    RawDevice,
    settings,
    state_payload,
)

HOST = "127.0.0.1"
LOG = logging.getLogger("bench")


def _paho_session(
    broker: Mosquitto,
    client_id: str,
    topic: str,
    *,
    manual: bool,
    expected: int,
    receive_maximum: int,
) -> float:
    """Connect a persistent paho session; if ``expected``, drain and return seconds."""
    got = threading.Event()
    count = [0]
    first: list[float] = []

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if not first:
            first.append(time.monotonic())
        count[0] += 1
        if manual:
            client.ack(msg.mid, msg.qos)
        if count[0] >= expected:
            got.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, manual_ack=manual
    )
    client.username_pw_set(broker.backend_username, broker.backend_password)
    client.on_message = on_message
    started = time.monotonic()
    client.connect(HOST, broker.port, clean_start=False, properties=_connect_props(receive_maximum))
    client.subscribe(topic, qos=1)
    client.loop_start()
    if expected:
        got.wait(600)
    else:
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    return elapsed


async def _aiomqtt_session(
    broker: Mosquitto, client_id: str, topic: str, expected: int, receive_maximum: int
) -> float:
    started = time.monotonic()
    async with aiomqtt.Client(
        HOST,
        broker.port,
        identifier=client_id,
        username=broker.backend_username,
        password=broker.backend_password,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=_connect_props(receive_maximum),
    ) as client:
        await client.subscribe(topic, qos=1)
        n = 0
        if expected:
            async with asyncio.timeout(600):
                async for _ in client.messages:
                    n += 1
                    if n >= expected:
                        break
    return time.monotonic() - started


def _connect_props(receive_maximum: int) -> Properties:
    """A persistent session with the bridge's receive maximum (same for every consumer)."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = receive_maximum
    return props


class _Batches(logging.Handler):
    """Collects the bridge's "batch written" debug lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.rows: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "batch written":
            self.rows.append(dict(record.__dict__))


async def _bridge_drain(
    broker: Mosquitto,
    mongo: MongoServer,
    db: str,
    tag: str,
    ids: list[str],
    rounds: int,
    pub: Publisher,
    **bridge: Any,
) -> dict[str, Any]:
    cfg = settings(broker, mongo.url, db, tag, session_expiry_s=3600, **bridge)
    async with _bridge(cfg):
        pass  # creates the persistent session, then leaves
    _flood(pub, ids, rounds, session=9)
    await pub.flushed(600)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url)
    final = f"{9:014x}.{rounds:014x}"
    batches = _Batches()
    LOG.addHandler(batches)
    LOG.setLevel(logging.DEBUG)
    started = time.monotonic()
    async with _bridge(cfg) as metrics:
        expected = len(ids) * rounds
        await _poll(lambda: _at_least(metrics.value("outpost_bridge_acked_total"), expected))
        ingest = time.monotonic() - started
        await _poll(lambda: _docs_at_least(client, db, final, len(ids)), interval=0.2)
        converge = time.monotonic() - started
        ops = metrics.value("outpost_bridge_db_ops_total")
    LOG.removeHandler(batches)
    await client.close()
    rows = batches.rows
    return {
        "ingest_s": ingest,
        "converge_s": converge,
        "updates": ops,
        "batches": len(rows),
        "batch_sizes": [r["messages"] for r in rows],
        "batch_updates": [r["updates"] for r in rows],
        "read_s": sum(r["read_s"] for r in rows),
        "update_s": sum(r["update_s"] for r in rows),
        "prepare_s": sum(r["prepare_s"] for r in rows),
    }


async def _at_least(value: float, n: int) -> bool:
    return value >= n


async def _docs_at_least(client: AsyncMongoClient[dict[str, Any]], db: str, k: str, n: int) -> bool:
    return await client[db].devices.count_documents({"state.k": k}) >= n


async def _poll(check: Any, interval: float = 0.05, limit: float = 1800) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish")
        await asyncio.sleep(interval)


class _bridge:
    """In-process bridge for the benchmark (same code as ``outpost bridge``)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.metrics = BridgeMetrics()

    async def __aenter__(self) -> BridgeMetrics:
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[Running] = loop.create_future()
        self.task = asyncio.create_task(
            run_bridge(
                self.cfg,
                LOG,
                metrics=self.metrics,
                handle_signals=False,
                on_started=self.started.set_result,
            )
        )
        await asyncio.wait(
            [self.started, self.task],  # type: ignore[type-var]
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self.task.done():
            self.task.result()
        return self.metrics

    async def __aexit__(self, *exc: object) -> None:
        self.started.result().bridge.stop()
        await self.task


def _flood(pub: Publisher, ids: list[str], rounds: int, session: int) -> None:
    for seq in range(1, rounds + 1):
        for dev in ids:
            pub.publish(f"devices/{dev}/state", state_payload(dev, session, seq, n=seq))


def _stored_state(k: str) -> dict[str, Any]:
    return {
        "firmware": "1.0.0",
        "hardware_model": "ap-1",
        "uptime_s": 0,
        "counters": {"n": 0},
        "config": None,
        "h": k,
        "k": k,
    }


async def _raw_bulk(mongo: MongoServer, db: str, ids: list[str], chunk: int, session: int) -> float:
    """Seconds for one conditional update per device, as the bridge builds them."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url)
    k = f"{session:014x}.{1:014x}"
    ops = [
        UpdateOne(
            {
                "_id": d,
                "$or": [{"state.k": {"$exists": False}}, {"state.k": {"$lt": k}}],
                "state.h": {"$ne": k},
            },
            {"$set": {"state": _stored_state(k), "last_seen": time.time()}},
        )
        for d in ids
    ]
    started = time.monotonic()
    result = await outpost_mongo.bulk_write(client[db].devices, ops, chunk=chunk)
    elapsed = time.monotonic() - started
    await client.close()
    if result.modified != len(ids):
        raise RuntimeError(f"raw bulk_write modified {result.modified} of {len(ids)}")
    return elapsed


async def _connect_storm(broker: Mosquitto, ids: list[str]) -> tuple[float, list[RawDevice]]:
    """Devices connect with a Last Will (no retained presence: the drains see state only)."""
    fleet = [RawDevice(broker, d, session=1) for d in ids]
    started = time.monotonic()
    for start in range(0, len(fleet), 500):
        await asyncio.gather(*(d.connect(online=False) for d in fleet[start : start + 500]))
    return time.monotonic() - started, fleet


class _Broker(Mosquitto):
    """Our broker config, optionally with another ``max_inflight_messages``."""

    max_inflight: int | None = None

    def _prepare(self) -> None:
        super()._prepare()
        if self.max_inflight is not None:
            conf = self.conf_path.read_text().replace(
                "max_inflight_messages 1000", f"max_inflight_messages {self.max_inflight}"
            )
            self.conf_path.write_text(conf)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    os.chmod(root, 0o755)  # Mosquitto drops to its own user, which must reach its folder
    broker = _Broker(root / "mqtt", free_port(), backend_password=secrets.token_urlsafe(12))
    broker.max_inflight = args.max_inflight
    mongo = MongoServer(root / "db", free_port())
    broker.start()
    mongo.start()
    pub = Publisher(broker, "bench-pub")
    try:
        return await _run(args, broker, mongo, pub)
    finally:
        pub.close()
        broker.stop()
        mongo.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _run(
    args: argparse.Namespace, broker: Mosquitto, mongo: MongoServer, pub: Publisher
) -> dict[str, Any]:
    ids = [f"dev-{i:06}" for i in range(args.devices)]
    messages = args.devices * args.rounds
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url)
    # Documents start with a state, as in a running fleet (inserts are cheap on FerretDB).
    first = f"{1:014x}.{1:014x}"
    await client["bench"].devices.insert_many(
        [{"_id": d, "state": _stored_state(first)} for d in ids]
    )
    chunk = 24 if await outpost_mongo.is_ferretdb(client["bench"]) else 10_000
    await client.close()
    results: dict[str, Any] = {
        "devices": args.devices,
        "rounds": args.rounds,
        "broker_max_inflight": args.max_inflight or 1000,
        "messages": messages,
        "mongo": mongo.flavour,
    }

    storm_s, fleet = await _connect_storm(broker, ids)
    results["connect_storm_s"] = storm_s
    for device in fleet:  # graceful: the wills do not fire
        await device.close()

    for name, manual in (
        () if args.skip_null else (("paho_manual_ack", True), ("paho_auto_ack", False))
    ):
        topic = f"$share/{name}/devices/+/state"
        await asyncio.to_thread(
            _paho_session,
            broker,
            f"bench-{name}",
            topic,
            manual=manual,
            expected=0,
            receive_maximum=args.receive_maximum,
        )
        _flood(pub, ids, args.rounds, session=5)
        await pub.flushed(600)
        elapsed = await asyncio.to_thread(
            _paho_session,
            broker,
            f"bench-{name}",
            topic,
            manual=manual,
            expected=messages,
            receive_maximum=args.receive_maximum,
        )
        results[f"{name}_msg_s"] = messages / elapsed
    if not args.skip_null:
        topic = "$share/aiomqtt/devices/+/state"
        await _aiomqtt_session(broker, "bench-aiomqtt", topic, 0, args.receive_maximum)
        _flood(pub, ids, args.rounds, session=5)
        await pub.flushed(600)
        results["aiomqtt_msg_s"] = messages / await _aiomqtt_session(
            broker, "bench-aiomqtt", topic, messages, args.receive_maximum
        )

    if args.mqtt_only:
        return results
    # The raw baseline is measured right before and right after the bridge (sessions 8
    # and 10 around the bridge's 9, so each pass changes every document); the mean is the
    # baseline, the two values show how much the machine drifted meanwhile.
    raw_before = len(ids) / await _raw_bulk(mongo, "bench", ids, chunk, session=8)
    drain = await _bridge_drain(
        broker,
        mongo,
        "bench",
        "bench",
        ids,
        args.rounds,
        pub,
        batch_max=args.batch_max,
        receive_maximum=args.receive_maximum,
    )
    raw_after = len(ids) / await _raw_bulk(mongo, "bench", ids, chunk, session=10)
    results.update(drain)
    results["raw_bulk_updates_s_before_after"] = [round(raw_before, 1), round(raw_after, 1)]
    results["raw_bulk_updates_s"] = (raw_before + raw_after) / 2
    results["bridge_ingest_msg_s"] = messages / drain["ingest_s"]
    results["bridge_updates_s"] = drain["updates"] / drain["converge_s"]
    null = results.get("paho_manual_ack_msg_s")
    if null:
        results["ratio_ingest_vs_null"] = results["bridge_ingest_msg_s"] / null
    results["ratio_ingest_vs_raw_bulk"] = (
        results["bridge_ingest_msg_s"] / results["raw_bulk_updates_s"]
    )
    results["ratio_updates_vs_raw_bulk"] = (
        results["bridge_updates_s"] / results["raw_bulk_updates_s"]
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="state messages per device")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        help="override the broker's max_inflight_messages (template: 1000)",
    )
    parser.add_argument("--batch-max", type=int, default=BridgeSettings().batch_max)
    parser.add_argument("--receive-maximum", type=int, default=BridgeSettings().receive_maximum)
    parser.add_argument(
        "--skip-null",
        action="store_true",
        help="skip the null subscribers (when only the database side changed)",
    )
    parser.add_argument(
        "--mqtt-only",
        action="store_true",
        help="connect storm and null subscribers only (fleets too large for "
        "the database to take in a reasonable time)",
    )
    parsed = parser.parse_args()
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = asyncio.run(main(parsed))
    out.update(
        {
            "date": began,
            "load_avg_after": os.getloadavg(),
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}",
        }
    )
    print(
        json.dumps(
            {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=2
        )
    )
