"""Benchmark: N devices out of the box, with only a claim secret and their serials.

On fresh servers (Mosquitto, FerretDB on PostgreSQL, versitygw; deploy.local, free ports,
a temp dir) and ``outpost api`` as its own process:

1. an admin makes a group with a WiFi template and a claim (allow-list of the N serials,
   device limit N, that group);
2. N simulated devices (one process, ``device.sim``) each connect as the claim account
   over TLS, ask for their identity and open the sealed reply (32 at once);
3. each then connects with its own account, announces presence and state, and applies
   the group's config that arrives retained on its config topic.

Reported: the time to provision all N, the time until all N are online with the config
applied (from the first request), the per-device provisioning latency (p50, p95, max),
and checks (N distinct device ids, one config hash, the api's counters). Appends a
section to bench/RESULTS.md.

    .venv/bin/python bench/provision_claim.py --devices 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from api.auth import Role, new_token  # noqa: E402
from api.store import tenants  # noqa: E402
from deploy.local import Mosquitto, S3Server, database_server, free_port  # noqa: E402
from device.provisioning import provision  # noqa: E402
from device.sim import Broker, Fleet, FleetOptions, Provisioned, serials  # noqa: E402
from outpost.mqtt import Endpoint  # noqa: E402
from outpost.sealing import IdentityKey  # noqa: E402
from outpost.signing import new_private_key  # noqa: E402

TEMPLATE = {
    "country": "DE",
    "radios": {"2.4GHz": {"channel": 6}, "5GHz": {"channel": 36, "width": 80}},
    "ssids": [
        {
            "name": "Lobby",
            "security": {"mode": "wpa2-psk", "passphrase": "welcome-guest-2026"},
            "bands": ["2.4GHz", "5GHz"],
        }
    ],
}


@contextlib.asynccontextmanager
async def servers(root: Path) -> AsyncIterator[tuple[Mosquitto, object, S3Server]]:
    broker = Mosquitto(root / "mosquitto", free_port(), backend_password=secrets.token_urlsafe(12))
    mongo = database_server(root / "mongodb", free_port(), durable=False)
    s3 = S3Server(root / "s3", free_port(), secret_key=secrets.token_urlsafe(16))
    started = []
    try:
        for server in (broker, mongo, s3):
            server.start()
            started.append(server)
        yield broker, mongo, s3
    finally:
        for server in reversed(started):
            server.stop()


@contextlib.asynccontextmanager
async def api_process(broker, mongo, s3, root: Path) -> AsyncIterator[tuple[str, str]]:
    """``outpost api`` in its own process; (its URL, an admin token)."""
    database, port = f"bench_{secrets.token_hex(4)}", free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OUTPOST_MQTT_URL": broker.url,
        "OUTPOST_MQTT_USERNAME": broker.account("api")[0],
        "OUTPOST_MQTT_PASSWORD": broker.account("api")[1],
        "OUTPOST_API_FIRMWARE_SIGNING_KEY": new_private_key(),
        "OUTPOST_API_DEVICE_BROKER_URL": broker.tls_url,
        "OUTPOST_MONGO_URL": mongo.url,
        "OUTPOST_MONGO_DATABASE": database,
        "OUTPOST_S3_ENDPOINT_URL": s3.url,
        "OUTPOST_S3_BUCKET": s3.bucket,
        "OUTPOST_S3_ACCESS_KEY_ID": s3.access_key,
        "OUTPOST_S3_SECRET_ACCESS_KEY": s3.secret_key,
        "OUTPOST_HTTP_PORT": str(port),
        "OUTPOST_LOG_LEVEL": "WARNING",
    }
    url = f"http://127.0.0.1:{port}"
    with (root / "api.log").open("w") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "api", cwd=root, env=env, stdout=log, stderr=log
        )
        try:
            async with asyncio.timeout(60), httpx.AsyncClient() as http:
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(f"{url}/readyz")).status_code == 200:
                            break
                    await asyncio.sleep(0.2)
            client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo.url)
            token = new_token()
            await tenants.create_tenant(client[database], "bench", "bench")  # type: ignore[arg-type]
            await tenants.create_token(client[database], token, "bench", Role.ADMIN, "b", None)  # type: ignore[arg-type]
            await client.close()
            yield url, token.secret
        finally:
            proc.terminate()
            async with asyncio.timeout(30):
                await proc.wait()


async def provision_timed(
    where: Broker, secret: str, batch: list[str], concurrency: int
) -> tuple[Provisioned, list[float]]:
    slots = asyncio.Semaphore(concurrency)
    endpoint = Endpoint(where.host, where.port, where.tls, where.ca_file)
    latencies: list[float] = []
    started = time.monotonic()

    async def one(serial: str):
        async with slots:
            t0 = time.monotonic()
            found = await provision(endpoint, secret, serial, "sim-ap", IdentityKey())
            latencies.append(time.monotonic() - t0)
        return serial, found

    done = Provisioned(dict(await asyncio.gather(*(one(s) for s in batch))))
    done.seconds = time.monotonic() - started
    return done, latencies


def temp_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    root.chmod(0o755)  # Mosquitto drops to its own user, which must reach its folder
    return root


async def run(devices: int, concurrency: int) -> dict[str, object]:
    root = await asyncio.to_thread(temp_root)
    try:
        async with servers(root) as (broker, mongo, s3):  # noqa: SIM117 - api needs them
            async with api_process(broker, mongo, s3, root) as (url, token):
                headers = {"Authorization": f"Bearer {token}"}
                async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
                    made = await http.post("/groups", json={"name": "lobby", "template": TEMPLATE})
                    assert made.status_code == 201, made.text
                    batch = serials("SN", devices)
                    body = {"name": "bench", "allow": batch, "device_limit": devices}
                    claim = await http.post("/claims", json=body | {"group": "lobby"})
                    assert claim.status_code == 201, claim.text
                    secret = claim.json()["secret"]
                where = Broker("127.0.0.1", broker.tls_port, tls=True, ca_file=str(broker.ca_file))
                log = logging.getLogger("bench")
                started = time.monotonic()
                done, latencies = await provision_timed(where, secret, batch, concurrency)
                options = FleetOptions(ids=done.ids, connect_concurrency=64)
                async with Fleet(options, done.fleet_broker(where), log) as fleet:
                    async with asyncio.timeout(300):
                        await fleet.wait_ready()
                        await fleet.wait_configured()
                    online = time.monotonic() - started
                    hashes = {fleet.device(i).config.hash for i in done.ids}
                async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
                    metrics = (await http.get("/metrics")).text
    finally:
        shutil.rmtree(root, ignore_errors=True)
    new = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith(("outpost_api_provisioning_total", "outpost_api_provisioning_seconds_"))
    ]
    ordered = sorted(latencies)
    return {
        "devices": devices,
        "concurrency": concurrency,
        "provisioned_s": round(done.seconds, 2),
        "online_with_config_s": round(online, 2),
        "per_second": round(devices / done.seconds, 1),
        "latency_p50_ms": round(statistics.median(ordered) * 1000),
        "latency_p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000),
        "latency_max_ms": round(ordered[-1] * 1000),
        "distinct_ids": len(set(done.ids)),
        "config_hashes": len(hashes),
        "api_counters": new,
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def section(result: dict[str, object], argv: list[str]) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    counters = "\n".join(f"    {c}" for c in result["api_counters"])  # type: ignore[union-attr]
    r = result
    rows = [
        (
            "all provisioned (own account, sealed reply opened)",
            f"{r['provisioned_s']} s ({r['per_second']} devices/s)",
        ),
        (
            "per device: p50 / p95 / max",
            f"{r['latency_p50_ms']} / {r['latency_p95_ms']} / {r['latency_max_ms']} ms",
        ),
        (
            "all online with their own accounts and the group's config applied, "
            "from the first request",
            f"{r['online_with_config_s']} s",
        ),
        ("distinct device ids / config hashes seen", f"{r['distinct_ids']} / {r['config_hashes']}"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"""
## Zero-touch provisioning: {result["devices"]} devices from one claim ({now})

Command: `.venv/bin/python bench/provision_claim.py {" ".join(argv)}`
Machine: {os.cpu_count()} CPUs (`nproc`), {cpu_model()}; Mosquitto 2.0.11, FerretDB v1.24.2 on
PostgreSQL, `outpost api` as its own process; the devices in one process (`device.sim`), over
TLS, {result["concurrency"]} provisioning at once.

Each device holds only the claim secret and its serial (allow-list of all {result["devices"]},
device limit {result["devices"]}, group with a WiFi template).

| measure | value |
| --- | --- |
{table}

The api's counters after the run:

{counters}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-write", action="store_true", help="print, do not append")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run(args.devices, args.concurrency))
    text = section(result, sys.argv[1:])
    print(text)
    if not args.no_write:
        with (REPO / "bench" / "RESULTS.md").open("a") as out:
            out.write(text)


if __name__ == "__main__":
    main()
