"""Benchmark: device command round trip for N devices at once (run by hand).

On fresh servers (Mosquitto and FerretDB/PostgreSQL from deploy.local, free ports, a temp
dir; a fresh versitygw is not needed: ``ping`` uploads nothing):

- the real bridge in a process of its own (``python -m cli bridge``: it stores the
  results), the api in-process (ASGI, no network hop), N simulated devices
  (``device.sim.Fleet``) online in this process;
- ``--mode api``: N operators send ``POST /devices/{id}/commands`` (``ping``, one per
  device) all at once; ``--mode direct``: the commands are written in one batch, then one
  backend client publishes the N requests at once as the api does (MQTT v5 request, QoS
  1): the same path without the api's per-request database work;
- measured per command, from the moment its POST (or its publish) starts:
  * ``accepted``: the api answered 202 (command stored, request published, PUBACK);
  * ``on the wire``: the device's result reached a backend subscriber (MQTT round trip
    through the broker, the device and back);
  * ``stored``: the bridge's result document is readable (one poller, every 100 ms, reads
    the ids stored so far: that is the resolution of this column).

The devices log in with the backend's shared account, and their registry entries are
written here directly rather than through ``POST /devices``: registering N broker accounts
costs minutes (Mosquitto rewrites its dynamic-security file at every change) and is not
what is measured. Everything else takes the production path.

    .venv/bin/python bench/command_rtt.py --devices 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiomqtt  # noqa: E402
import httpx  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from api.app import Settings as ApiAppSettings  # noqa: E402
from api.app import create_app  # noqa: E402
from api.auth import Role, new_token  # noqa: E402
from api.command_service import properties  # noqa: E402
from api.settings import ApiSettings  # noqa: E402
from api.store import tenants  # noqa: E402
from api.store.base import new_id  # noqa: E402
from deploy.local import Mosquitto, database_server, free_port  # noqa: E402
from device.sim.fleet import Broker, Fleet, FleetOptions  # noqa: E402
from outpost.settings import MongoSettings, MqttSettings, S3Settings  # noqa: E402
from outpost.store import Insert, Store  # noqa: E402
from schemas.commands import expiry_interval, request  # noqa: E402
from schemas.documents import COMMAND_RESULTS, COMMANDS, DEVICES, CommandDoc  # noqa: E402
from schemas.protocol import encode  # noqa: E402
from schemas.topics import Channel, topic  # noqa: E402
from tests.integration.bridge.helpers import bridge_env, spawn_bridge, wait_ready  # noqa: E402

LOG = logging.getLogger("bench.commands")


@contextlib.contextmanager
def servers() -> Any:
    root = Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    root.chmod(0o755)
    broker = Mosquitto(root / "mosquitto", free_port(), backend_password=secrets.token_urlsafe(12))
    broker.start()
    mongo = database_server(root / "db", free_port(), durable=False)
    mongo.start()
    try:
        yield broker, mongo
    finally:
        mongo.stop()
        broker.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def api_settings(broker: Mosquitto, mongo_url: str, database: str) -> ApiAppSettings:
    user, password = broker.account("api")
    return ApiAppSettings(
        mqtt=MqttSettings(url=broker.url, username=user, password=password),
        mongo=MongoSettings(url=mongo_url, database=database),
        s3=S3Settings(
            endpoint_url="http://127.0.0.1:9",
            bucket="unused",
            access_key_id="unused",
            secret_access_key="unused-secret",
        ),
        api=ApiSettings(broker_timeout_s=30, mongo_timeout_s=30),
    )


@contextlib.asynccontextmanager
async def api_client(broker: Mosquitto, mongo_url: str, database: str) -> AsyncIterator[Any]:
    app = create_app(api_settings(broker, mongo_url, database))
    async with app.router.lifespan_context(app) as state:
        app_state = state["app"]  # type: ignore[index]
        for _ in range(600):  # the api's broker link: connected within 30 s
            if app_state.link.connected:
                break
            await asyncio.sleep(0.05)
        await tenants.create_tenant(app_state.db, "bench", "bench")
        token = new_token()
        await tenants.create_token(app_state.db, token, "bench", Role.OPERATOR, "bench", None)

        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = {"app": app_state}
            await app(scope, receive, send)

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi),
            base_url="http://api",
            headers={"Authorization": f"Bearer {token.secret}"},
            timeout=120,
        ) as http:
            yield http


async def seed_registry(db: Store, ids: list[str]) -> None:
    now = datetime.now(UTC)
    docs = [
        {"_id": d, "tenant_id": "bench", "hardware_model": "sim-ap", "tags": [], "created_at": now}
        for d in ids
    ]
    await db.apply(DEVICES, [Insert(d) for d in docs])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def run(devices: int, mode: str) -> dict[str, Any]:
    with servers() as (broker, mongo):
        database = f"bench_{secrets.token_hex(4)}"
        prefix = f"b{secrets.token_hex(3)}"
        options = FleetOptions(devices=devices, prefix=prefix, connect_concurrency=64)
        ids = [options.device_id(i) for i in range(devices)]
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url, tz_aware=True)
        db = Store(client[database])
        await seed_registry(db, ids)
        fleet_broker = Broker(
            "127.0.0.1", broker.port, broker.backend_username, broker.backend_password
        )
        port = free_port()
        env = bridge_env(
            broker, mongo, database, secrets.token_hex(3), instance="0", http_port=port
        )
        bridge = spawn_bridge(env, Path(tempfile.mkstemp(suffix=".bridge.log")[1]))
        await wait_ready(port, bridge, within=60)
        async with (
            contextlib.AsyncExitStack() as stack,
            api_client(broker, mongo.url, database) as http,
            Fleet(options, fleet_broker, LOG) as fleet,
        ):
            await asyncio.wait_for(fleet.wait_ready(), 300)
            wire: dict[str, float] = {}
            stored: dict[str, float] = {}
            started: dict[str, float] = {}
            accepted: dict[str, float] = {}
            by_device: dict[str, str] = {}
            complete = asyncio.Event()
            api_user, api_password = broker.account("api")
            publisher = aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                username=api_user,
                password=api_password,
                identifier=f"bench-pub-{secrets.token_hex(3)}",
                protocol=aiomqtt.ProtocolVersion.V5,
                max_inflight_messages=65535,
                max_queued_outgoing_messages=0,
            )
            await publisher.__aenter__()
            user, password = broker.account("observer")
            async with aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                username=user,
                password=password,
                identifier=f"bench-obs-{secrets.token_hex(3)}",
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as observer:
                await observer.subscribe("devices/+/commands/+/result", qos=1)

                async def watch() -> None:
                    async for message in observer.messages:
                        command_id = str(message.topic).split("/")[3]
                        wire.setdefault(command_id, time.monotonic())

                async def poll() -> None:
                    while True:
                        found = (
                            await client[database][COMMAND_RESULTS]
                            .find({}, {"_id": 1})
                            .to_list(None)
                        )
                        now = time.monotonic()
                        for doc in found:
                            stored.setdefault(doc["_id"], now)
                        if len(started) == devices and started.keys() <= stored.keys():
                            complete.set()
                        await asyncio.sleep(0.1)

                async def publish(doc: CommandDoc) -> None:
                    began = time.monotonic()
                    now = datetime.now(UTC)
                    message = request(doc.id, doc.name, doc.args, now, doc.expires_at)
                    expiry = expiry_interval(doc.expires_at, now) or 1
                    await publisher.publish(
                        topic(Channel.COMMAND, doc.device_id, doc.id),
                        encode(message),
                        qos=1,
                        properties=properties(doc.device_id, doc.id, expiry),
                    )
                    started[doc.id] = began
                    accepted[doc.id] = time.monotonic()

                async def send(device_id: str) -> None:
                    began = time.monotonic()
                    response = await http.post(
                        f"/devices/{device_id}/commands",
                        json={"name": "ping", "args": {"target": "192.0.2.1", "count": 1}},
                    )
                    assert response.status_code == 202, response.text
                    command_id = response.json()["id"]
                    started[command_id] = began
                    accepted[command_id] = time.monotonic()
                    by_device[command_id] = device_id

                tasks = [
                    asyncio.create_task(watch(), name="bench watch"),
                    asyncio.create_task(poll(), name="bench poll"),
                ]
                load_before = os.getloadavg()
                if mode == "direct":
                    docs = [
                        CommandDoc(
                            id=new_id(),
                            tenant_id="bench",
                            device_id=d,
                            name="ping",
                            args={"target": "192.0.2.1", "count": 1},
                            created_at=datetime.now(UTC),
                            expires_at=datetime.now(UTC) + timedelta(minutes=10),
                        )
                        for d in ids
                    ]
                    await db.apply(COMMANDS, [Insert(d.to_mongo()) for d in docs])
                t0 = time.monotonic()
                if mode == "direct":
                    await asyncio.gather(*(publish(d) for d in docs))
                else:
                    await asyncio.gather(*(send(d) for d in ids))
                all_accepted = time.monotonic() - t0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(complete.wait(), 300)
                total = time.monotonic() - t0
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await publisher.__aexit__(None, None, None)
            stack.callback(_stop, bridge)
        await client.drop_database(database)
        await client.close()
    both = [c for c in started if c in stored and c in wire]
    return {
        "mode": mode,
        "devices": devices,
        "answered": len(both),
        "accepted": quantiles([accepted[c] - started[c] for c in started]),
        "on_the_wire": quantiles([wire[c] - started[c] for c in both]),
        "stored": quantiles([stored[c] - started[c] for c in both]),
        "all_accepted_s": round(all_accepted, 2),
        "all_stored_s": round(total, 2),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    python = platform.python_version()
    return f"nproc {os.cpu_count()}, {model}, {platform.platform()}, Python {python}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--mode", choices=["api", "direct"], default="api")
    parser.add_argument("--json", type=Path, help="also write the run here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bench.commands.mqtt").setLevel(logging.CRITICAL)
    result = asyncio.run(run(args.devices, args.mode))
    result["machine"] = machine()
    result["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
