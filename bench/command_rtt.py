"""Benchmark: device command round trip for N devices at once (run by hand).

On fresh servers (Mosquitto and FerretDB/PostgreSQL from deploy.local, free ports, a temp
dir; no S3: ``ping`` uploads nothing), every component in a process of its own, as
deployed: ``outpost bridge`` (stores the results), ``outpost api``, and
``outpost sim --devices N`` (the simulated devices answer commands). This process only
sends and watches:

- ``--mode api``: N operators send ``POST /devices/{id}/commands`` (``ping``, one per
  device) all at once, over HTTP; ``--mode direct``: the commands are written in one
  batch, then one backend client publishes the N requests at once as the api does (MQTT
  v5 request, QoS 1): the same path without the api's per-request database work;
- measured per command, from the moment its POST (or its publish) starts:
  * ``accepted``: the api answered 202 (command stored, request published, PUBACK), or
    the broker acknowledged the publish;
  * ``on the wire``: the device's result reached a backend subscriber (the round trip
    through the broker, the device and back);
  * ``stored``: the bridge's result document is readable (one poller, every 100 ms, reads
    the ids stored so far: that is the resolution of this column).

The devices log in with the backend's shared account and their registry entries are
written here directly, not through ``POST /devices``: registering N broker accounts costs
minutes (Mosquitto rewrites its dynamic-security file at every change) and is not what
is measured. Everything else takes the production path.

    .venv/bin/python bench/command_rtt.py --devices 1000 --mode api
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
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiomqtt  # noqa: E402
import httpx  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from api.auth import Role, new_token  # noqa: E402
from api.command_service import properties  # noqa: E402
from api.store import tenants  # noqa: E402
from api.store.base import new_id  # noqa: E402
from deploy.local import Mosquitto, database_server, free_port  # noqa: E402
from outpost.store import Insert, Store  # noqa: E402
from schemas.commands import expiry_interval, request  # noqa: E402
from schemas.documents import COMMAND_RESULTS, COMMANDS, DEVICES, CommandDoc  # noqa: E402
from schemas.protocol import encode  # noqa: E402
from schemas.topics import Channel, numbered_device_id, topic  # noqa: E402

LOG = logging.getLogger("bench.commands")
PING_ARGS: dict[str, Any] = {"target": "192.0.2.1", "count": 1}
PING: dict[str, Any] = {"name": "ping", "args": PING_ARGS}


@contextlib.contextmanager
def servers() -> Iterator[tuple[Mosquitto, Any, Path]]:
    root = Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    root.chmod(0o755)
    broker = Mosquitto(root / "mosquitto", free_port(), backend_password=secrets.token_urlsafe(12))
    broker.start()
    mongo = database_server(root / "db", free_port(), durable=False)
    mongo.start()
    try:
        yield broker, mongo, root
    finally:
        mongo.stop()
        broker.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def service_env(
    broker: Mosquitto, role: str, mongo_url: str, database: str, port: int
) -> dict[str, str]:
    user, password = broker.account(role)
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OUTPOST_MQTT_URL": broker.url,
        "OUTPOST_MQTT_USERNAME": user,
        "OUTPOST_MQTT_PASSWORD": password,
        "OUTPOST_MQTT_CLIENT_ID_PREFIX": f"bench{secrets.token_hex(2)}",
        "OUTPOST_MONGO_URL": mongo_url,
        "OUTPOST_MONGO_DATABASE": database,
        "OUTPOST_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "OUTPOST_S3_BUCKET": "unused",
        "OUTPOST_S3_ACCESS_KEY_ID": "unused",
        "OUTPOST_S3_SECRET_ACCESS_KEY": "unused-secret",
        "OUTPOST_API_MONGO_TIMEOUT_S": "30",
        "OUTPOST_API_BROKER_TIMEOUT_S": "30",
        "OUTPOST_HTTP_HOST": "127.0.0.1",
        "OUTPOST_HTTP_PORT": str(port),
        "OUTPOST_LOG_LEVEL": "WARNING",
    }


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def until_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if await asyncio.to_thread(ready, port):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.args!r} not ready")


def backend(broker: Mosquitto, role: str, **options: Any) -> aiomqtt.Client:
    user, password = broker.account(role)
    quiet = logging.getLogger(f"bench.commands.{role}")
    quiet.setLevel(logging.CRITICAL)
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=user,
        password=password,
        identifier=f"bench-{role}-{secrets.token_hex(3)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        logger=quiet,
        **options,
    )


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


class Watch:
    """Result arrivals on the wire and in the database, in this process."""

    def __init__(self, devices: int) -> None:
        self.devices = devices
        self.wire: dict[str, float] = {}
        self.stored: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.accepted: dict[str, float] = {}
        self.online: set[str] = set()
        self.all_online = asyncio.Event()
        self.complete = asyncio.Event()

    async def mqtt(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            parts = str(message.topic).split("/")
            if parts[2] == "presence":
                body = json.loads(message.payload) if isinstance(message.payload, bytes) else {}
                if body.get("status") == "online":
                    self.online.add(parts[1])
                if len(self.online) >= self.devices:
                    self.all_online.set()
            else:
                self.wire.setdefault(parts[3], time.monotonic())

    async def database(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        while True:
            found = await client[database][COMMAND_RESULTS].find({}, {"_id": 1}).to_list(None)
            now = time.monotonic()
            for doc in found:
                self.stored.setdefault(doc["_id"], now)
            if len(self.started) == self.devices and self.started.keys() <= self.stored.keys():
                self.complete.set()
            await asyncio.sleep(0.1)


async def send_all(mode: str, ids: list[str], watch: Watch, db: Store, http: Any, pub: Any) -> None:
    async def post(device_id: str) -> None:
        began = time.monotonic()
        response = await http.post(f"/devices/{device_id}/commands", json=PING)
        assert response.status_code == 202, response.text
        command_id = response.json()["id"]
        watch.started[command_id] = began
        watch.accepted[command_id] = time.monotonic()

    async def publish(doc: CommandDoc) -> None:
        began = time.monotonic()
        now = datetime.now(UTC)
        message = request(doc.id, doc.name, doc.args, now, doc.expires_at)
        await pub.publish(
            topic(Channel.COMMAND, doc.device_id, doc.id),
            encode(message),
            qos=1,
            properties=properties(doc.device_id, doc.id, expiry_interval(doc.expires_at, now) or 1),
        )
        watch.started[doc.id] = began
        watch.accepted[doc.id] = time.monotonic()

    if mode == "api":
        await asyncio.gather(*(post(d) for d in ids))
        return
    now = datetime.now(UTC)
    docs = [
        CommandDoc(
            id=new_id(),
            tenant_id="bench",
            device_id=d,
            name="ping",
            args=PING_ARGS,
            created_at=now,
            expires_at=now + timedelta(minutes=10),
        )
        for d in ids
    ]
    await db.apply(COMMANDS, [Insert(d.to_mongo()) for d in docs])
    await asyncio.gather(*(publish(d) for d in docs))


async def run(devices: int, mode: str) -> dict[str, Any]:
    with servers() as (broker, mongo, root):
        database = f"bench_{secrets.token_hex(4)}"
        prefix = f"b{secrets.token_hex(3)}"
        ids = [numbered_device_id(prefix, i) for i in range(devices)]
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url, tz_aware=True)
        db = Store(client[database])
        now = datetime.now(UTC)
        registry = [
            {
                "_id": d,
                "tenant_id": "bench",
                "hardware_model": "sim-ap",
                "tags": [],
                "created_at": now,
            }
            for d in ids
        ]
        await db.apply(DEVICES, [Insert(d) for d in registry])
        await tenants.create_tenant(db, "bench", "bench")
        token = new_token()
        await tenants.create_token(db, token, "bench", Role.OPERATOR, "bench", None)
        bridge_port, api_port = free_port(), free_port()
        sim_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OUTPOST_SIM_BROKER_URL": broker.url,
            "OUTPOST_SIM_USERNAME": broker.backend_username,
            "OUTPOST_SIM_PASSWORD": broker.backend_password,
        }
        watch = Watch(devices)
        with (
            process(
                [sys.executable, "-m", "cli", "bridge"],
                service_env(broker, "bridge", mongo.url, database, bridge_port),
                root / "bridge.log",
            ) as bridge,
            process(
                [sys.executable, "-m", "cli", "api"],
                service_env(broker, "api", mongo.url, database, api_port),
                root / "api.log",
            ) as api,
        ):
            await until_ready(bridge_port, bridge)
            await until_ready(api_port, api)
            async with (
                backend(broker, "observer") as observer,
                backend(broker, "api", max_inflight_messages=65535) as pub,
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{api_port}",
                    headers={"Authorization": f"Bearer {token.secret}"},
                    timeout=300,
                    # no keep-alive: a connection the server closes while idle is never
                    # reused by a POST (which must not be retried)
                    limits=httpx.Limits(max_connections=100, max_keepalive_connections=0),
                ) as http,
            ):
                await observer.subscribe("devices/+/presence", qos=1)
                await observer.subscribe("devices/+/commands/+/result", qos=1)
                tasks = [
                    asyncio.create_task(watch.mqtt(observer), name="bench mqtt"),
                    asyncio.create_task(watch.database(client, database), name="bench db"),
                ]
                argv = [sys.executable, "-m", "cli", "sim", "--devices", str(devices)]
                argv += ["--prefix", prefix, "--state-interval", "0"]
                with process(argv, sim_env, root / "sim.log"):
                    await asyncio.wait_for(watch.all_online.wait(), 300)
                    load_before = os.getloadavg()
                    t0 = time.monotonic()
                    await send_all(mode, ids, watch, db, http, pub)
                    all_accepted = time.monotonic() - t0
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(watch.complete.wait(), 300)
                    total = time.monotonic() - t0
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    both = [c for c in watch.started if c in watch.stored and c in watch.wire]
    started = watch.started
    return {
        "mode": mode,
        "devices": devices,
        "answered": len(both),
        "accepted": quantiles([watch.accepted[c] - started[c] for c in started]),
        "on_the_wire": quantiles([watch.wire[c] - started[c] for c in both]),
        "stored": quantiles([watch.stored[c] - started[c] for c in both]),
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
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--mode", choices=["api", "direct"], default="api")
    parser.add_argument("--json", type=Path, help="also write the run here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run(args.devices, args.mode))
    result["machine"] = machine()
    result["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
