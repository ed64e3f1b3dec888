"""Scale-out drill: 3 bridges, 2 schedulers and 2 apis on one broker and one database,
a simulated fleet publishing, a config push and a rollout, one ``kill -9`` of each kind.

    PYTHONPATH=. .venv/bin/python bench/scale_out_drill.py --devices 5000 --seed 1 --json out.json
    PYTHONPATH=. .venv/bin/python bench/scale_out_drill.py --devices 300 --broker mochi

Everything runs as separate processes on this machine, started here and stopped here
(also on failure): Mosquitto (or mochi-mqtt, ``--broker mochi``, built from
``bench/mochi``), FerretDB on a private PostgreSQL (or ``OUTPOST_MONGO_URL``), versitygw,
``outpost api`` x2, ``outpost bridge`` x3, ``outpost scheduler`` x2, and the simulated
devices (``device.sim.Fleet``) in processes of at most 2,500 devices each. The drill
talks to the backend only as its users do: admins through the two apis (a client that
fails over between them, as a load balancer would), devices through the broker. It reads
the database only to check outcomes and to time rounds.

Phases (the kill points are drawn from ``random.Random(seed)`` and logged):

1. **register**: every device through the apis (each gets its broker account, unless
   the broker manages accounts itself), in group ``g1``; devices connect, wait until
   the bridge has recorded every one online.
2. **throughput, 1 bridge then 3**: rounds in lock-step: every device sends one state
   carrying ``counters.drill_round = r``; the round ends when the database shows round
   ``r`` for every device. messages/s = devices / round time; median of the rounds.
3. **bridge kill**: more rounds; in one of them a random bridge is killed with SIGKILL
   after a random delay, restarted (same instance name, so it finds its session) after
   another. Each round must still end with every device at round ``r``: a state the
   broker acknowledged and the bridge lost would leave its device at ``r - 1``, as
   nothing else sends states in this phase. So every one of ``devices x rounds``
   messages is shown stored, not counted.
4. **config push, api kill**: ``PUT /devices/{id}/config/overrides`` (``If-Match: *``,
   idempotent) for every device, spread over both apis; after a random number of
   answers one api is killed and restarted; requests it dropped are retried on the
   other. Every device must report the desired version applied (at the device and in
   the database). A pointer moved whose publish died with the api is the scheduler's
   reconcile's job (its lag is 20 s here).
5. **rollout, scheduler kill**: firmware uploaded through the api, one rollout to the
   whole group; once a random number of commands went out, the scheduler holding the
   rollout's lease is killed and restarted; the other takes over after the lease
   (30 s). The rollout must complete.

Invariants (exit status 1 if any fails): every round stored for every device; each
device received exactly one upgrade command for the rollout (counted at the devices:
the simulator logs every job message it gets); every device on the target firmware and
on its desired config, at the device and in the database; every execution succeeded.

Results: a JSON summary on stdout (``--json`` appends it to a JSON list).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from deploy.local import Mosquitto, database_server, free_port, mqtt_connack
from deploy.local.servers import S3Server
from outpost.signing import SigningKey
from schemas.documents import (
    DEVICE_PRESENCE,
    DEVICE_STATUS,
    DEVICES,
    JOB_EXECUTIONS,
    SCHEDULER_CLAIMS,
)
from schemas.topics import numbered_device_id

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
LOG = logging.getLogger("drill")
PER_PROCESS = 2500
DB = "drill"
TENANT = "t1"
GROUP = "g1"
OLD, NEW = "1.0.0", "2.0.0"


class DrillFailed(Exception):
    """An invariant did not hold (or a phase did not finish in time)."""


def log(event: str, **fields: Any) -> None:
    LOG.info(event, extra={"fields": fields})


async def until(
    check: Callable[[], Awaitable[bool]], limit_s: float, what: str, every: float = 0.25
) -> float:
    """Poll ``check`` until true; seconds taken. DrillFailed after ``limit_s``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > limit_s:
            raise DrillFailed(f"timed out after {limit_s:.0f} s: {what}")
        await asyncio.sleep(every)
    return time.monotonic() - started


# -- processes -------------------------------------------------------------------------


@dataclass
class Proc:
    """One process the drill started; ``kill9`` and ``start`` again keep its name."""

    name: str
    argv: list[str]
    env: dict[str, str]
    logs: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        out = (self.logs / f"{self.name}.{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def healthy(self) -> bool:
        if not self.alive() or self.port is None:
            return False
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    async def ready(self, limit_s: float = 120) -> None:
        async def check() -> bool:
            if not self.alive():
                raise DrillFailed(f"{self.name} exited; see {self.logs}/{self.name}.*.log")
            return await asyncio.to_thread(self.healthy)

        await until(check, limit_s, f"{self.name} ready")


# -- brokers ---------------------------------------------------------------------------


class Broker:
    """What the drill needs of a broker: service accounts and how devices reach it."""

    name = "broker"
    url = ""
    accounts_managed = True  # the api creates device accounts ($CONTROL dynsec)

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def account(self, role: str) -> tuple[str, str]:
        raise NotImplementedError

    def devices(self) -> dict[str, Any]:
        """How simulated devices connect (host, port, tls, ca_file)."""
        raise NotImplementedError

    def pid(self) -> int | None:
        return None


class MosquittoBroker(Broker):
    name = "mosquitto"

    def __init__(self, root: Path) -> None:
        self.server = Mosquitto(root, free_port(), backend_password=secrets.token_urlsafe(12))
        self.url = self.server.url

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def account(self, role: str) -> tuple[str, str]:
        return self.server.account(role)

    def devices(self) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": self.server.tls_port,
            "tls": True,
            "ca_file": str(self.server.ca_file),
        }

    def pid(self) -> int | None:
        return self.server.running_pid()


class MochiBroker(Broker):
    """mochi-mqtt v2.7.9 (``bench/mochi``): allow-all auth on loopback, no TLS listener,
    in-memory sessions. Device accounts are not the api's to manage there."""

    name = "mochi"
    accounts_managed = False

    def __init__(self, root: Path, logs: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"mqtt://{HOST}:{self.port}"
        binary = root / "mochi"
        self.proc = Proc(
            "mochi", [str(binary), "-addr", f"{HOST}:{self.port}", "-sys-interval", "10"], {}, logs
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        go = shutil.which("go") or "/usr/local/go/bin/go"
        subprocess.run(
            [go, "build", "-o", str(self.root / "mochi"), "."],
            cwd=REPO / "bench" / "mochi",
            check=True,
        )
        self.proc.start()
        deadline = time.monotonic() + 30
        while mqtt_connack(HOST, self.port, "probe", "probe") != "Success":
            if time.monotonic() > deadline or not self.proc.alive():
                raise DrillFailed("mochi did not answer CONNECT")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.stop()

    def account(self, role: str) -> tuple[str, str]:
        return f"outpost-{role}", "unused-allow-all"

    def devices(self) -> dict[str, Any]:
        return {"host": HOST, "port": self.port, "tls": False, "ca_file": None}

    def pid(self) -> int | None:
        return self.proc.pid if self.proc.alive() else None


# -- the api, as admins use it (two instances behind a failing-over client) --------------


@dataclass
class ApiPool:
    """Round robin over the apis; a request an api dropped (killed mid-request, refused)
    goes to the next one. Only idempotent requests are sent while a kill may happen."""

    apis: list[Proc]
    token: str
    failovers: int = 0
    lock_retries: int = 0
    _next: int = 0
    _clients: dict[int, httpx.AsyncClient] = field(default_factory=dict)

    def _client(self, port: int) -> httpx.AsyncClient:
        if port not in self._clients:
            self._clients[port] = httpx.AsyncClient(
                base_url=f"http://{HOST}:{port}",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=60,
            )
        return self._clients[port]

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(40):
            api = self.apis[self._next % len(self.apis)]
            self._next += 1
            assert api.port is not None
            try:
                response = await self._client(api.port).request(method, path, **kwargs)
            except httpx.TransportError:
                self.failovers += 1
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
                continue
            if response.status_code == 503:  # an api without its broker or database yet
                self.failovers += 1
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
                continue
            if response.status_code == 409 and "retry" in response.json().get("detail", ""):
                # a revision lock whose holder died (an api killed mid-request): freed
                # after api.store.revisions.LOCK_TTL (15 s)
                self.lock_retries += 1
                await asyncio.sleep(1.0)
                continue
            return response
        raise DrillFailed(f"{method} {path}: no api answered")

    async def ok(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        response = await self.request(method, path, **kwargs)
        if response.status_code != expect:
            raise DrillFailed(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()


# -- device processes ------------------------------------------------------------------


async def device_process(spec: dict[str, Any]) -> None:
    """Child: a Fleet of ``spec["count"]`` devices; commands on stdin, JSON answers."""
    from device.sim.fleet import Broker as SimBroker
    from device.sim.fleet import Fleet, FleetOptions

    os.nice(5)
    accounts = json.loads(await asyncio.to_thread(Path(spec["accounts"]).read_text))
    where = spec["broker"]
    broker = SimBroker(
        where["host"],
        where["port"],
        where.get("username"),
        where.get("password"),
        tls=where["tls"],
        ca_file=where["ca_file"],
        accounts={k: v for k, v in accounts.items() if k.startswith(spec["prefix"] + "-")},
    )
    options = FleetOptions(
        devices=spec["count"],
        prefix=spec["prefix"],
        firmware=OLD,
        hardware_model="hw1",
        firmware_key=spec["firmware_key"],
        reconnect_base=0.2,
        reconnect_cap=2.0,
        connect_concurrency=32,
        download_concurrency=16,
        seed=spec["seed"],
    )
    logger = logging.getLogger("drill.devices")
    async with Fleet(options, broker, logger) as fleet:
        async with asyncio.timeout(600):
            await fleet.wait_ready()
        _answer({"ready": len(fleet.ids)})
        while line := await asyncio.to_thread(sys.stdin.readline):
            words = line.split()
            if words[0] == "round":
                sent = await fleet.publish_state_all(counters={"drill_round": int(words[1])})
                _answer({"sent": sent})
            elif words[0] == "report":
                _answer(_report(fleet))
            elif words[0] == "stop":
                break
    _answer({"stopped": True})


def _report(fleet: Any) -> dict[str, Any]:
    devices = {
        d.device_id: {
            "firmware": d.firmware,
            "config": d.config.version if d.config else None,
            "commands": d.jobs_received,
            "connected": d.connected,
        }
        for d in fleet.devices.values()
    }
    stats = fleet.stats
    return {
        "devices": devices,
        "stats": {
            "sent": stats.sent,
            "send_failures": stats.send_failures,
            "connects": stats.connects,
            "jobs_succeeded": stats.jobs_succeeded,
            "jobs_failed": stats.jobs_failed,
        },
    }


def _answer(body: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(body) + "\n")
    sys.stdout.flush()


class DeviceProcs:
    def __init__(self, specs: list[dict[str, Any]], logs: Path) -> None:
        self.specs = specs
        self.logs = logs
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for n, spec in enumerate(self.specs):
            err = (self.logs / f"devices-{n}.log").open("wb")
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--device-process",
                    json.dumps(spec),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    cwd=REPO,
                    limit=64 * 1024 * 1024,
                )
            )
            err.close()
        answers = await self.ask_all(None)
        if sum(a["ready"] for a in answers) != sum(s["count"] for s in self.specs):
            raise DrillFailed(f"devices not ready: {answers}")

    async def ask(self, proc: asyncio.subprocess.Process, line: str | None) -> dict[str, Any]:
        assert proc.stdin is not None
        assert proc.stdout is not None
        if line is not None:
            proc.stdin.write(line.encode() + b"\n")
            await proc.stdin.drain()
        raw = await proc.stdout.readline()
        if not raw:
            raise DrillFailed("a device process died; see its log")
        answer: dict[str, Any] = json.loads(raw)
        return answer

    async def ask_all(self, line: str | None) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.ask(p, line) for p in self.procs)))

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(90):
                        await self.ask(proc, "stop")
                        await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# -- the drill -------------------------------------------------------------------------


@dataclass
class Kill:
    what: str
    victim: str
    pid: int
    at: str  # where in the phase, in words
    after_s: float  # since the phase started
    restarted_after_s: float


@dataclass
class Drill:
    args: argparse.Namespace
    root: Path
    rng: random.Random
    broker: Broker
    mongo_url: str
    s3: S3Server
    procs: list[Proc] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def per_device(self) -> bool:
        """Devices log in with the accounts the api made for them (else: one shared)."""
        return self.broker.accounts_managed and self.args.accounts == "api"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def env(self, role: str) -> dict[str, str]:
        username, password = self.broker.account(role)
        return {
            "OUTPOST_MQTT_URL": self.broker.url,
            "OUTPOST_MQTT_USERNAME": username,
            "OUTPOST_MQTT_PASSWORD": password,
            "OUTPOST_MQTT_CLIENT_ID_PREFIX": "drill",
            "OUTPOST_MONGO_URL": self.mongo_url,
            "OUTPOST_MONGO_DATABASE": DB,
            "OUTPOST_S3_ENDPOINT_URL": self.s3.url,
            "OUTPOST_S3_BUCKET": self.s3.bucket,
            "OUTPOST_S3_ACCESS_KEY_ID": self.s3.access_key,
            "OUTPOST_S3_SECRET_ACCESS_KEY": self.s3.secret_key,
            "OUTPOST_HTTP_HOST": HOST,
            "OUTPOST_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        }

    def service(self, command: str, name: str, extra: dict[str, str]) -> Proc:
        port = free_port()
        env = {**self.env(command), **extra, "OUTPOST_HTTP_PORT": str(port)}
        proc = Proc(name, [sys.executable, "-m", "cli", command], env, self.logs, port)
        self.procs.append(proc)
        proc.start()
        return proc

    # ---------------------------------------------------------------- set-up

    async def run(self) -> None:
        n = self.args.devices
        signing_key = base64.b64encode(secrets.token_bytes(32)).decode()
        public_key = SigningKey(signing_key).public_text
        api_env = {
            "OUTPOST_API_FIRMWARE_SIGNING_KEY": signing_key,
            "OUTPOST_API_BROKER_TIMEOUT_S": "30",
            "OUTPOST_API_MONGO_TIMEOUT_S": "30",
            "OUTPOST_API_BROKER_ACCOUNTS": "dynsec" if self.per_device else "external",
        }
        self.apis = [self.service("api", f"api{i}", api_env) for i in range(2)]
        self.bridges = [self.bridge(0)]
        self.schedulers = [self.scheduler(i) for i in range(2)]
        for proc in [*self.apis, *self.bridges, *self.schedulers]:
            await proc.ready()
        token = await self.admin_token()
        self.pool = ApiPool(self.apis, token)
        try:
            await self.pool.ok("POST", "/groups", 201, json={"name": GROUP})
            ids, accounts = await self.register(n)
            specs = self.device_specs(ids, accounts, public_key)
            self.devices = DeviceProcs(specs, self.logs)
            try:
                await self.phases(ids)
            finally:
                await self.devices.stop()
        finally:
            await self.pool.close()

    def bridge(self, i: int) -> Proc:
        return self.service(
            "bridge",
            f"bridge{i}",
            {"OUTPOST_BRIDGE_INSTANCE": f"b{i}", "OUTPOST_BRIDGE_SHARE_GROUP": "drill"},
        )

    def scheduler(self, i: int, generation: int = 0) -> Proc:
        return self.service(
            "scheduler",
            f"scheduler{i}",
            {
                "OUTPOST_SCHEDULER_INSTANCE": f"s{i}-{generation}",
                "OUTPOST_SCHEDULER_TICK_SECONDS": "1",
                # lease and margin stay at their defaults (30 s, 5 s): with 10 s here a
                # tick on the loaded machine outlasted the lease and the two
                # instances kept taking the rollout from each other ("lease lost
                # mid-tick"), sending a few commands per second
                "OUTPOST_SCHEDULER_RECONCILE_SECONDS": "10",
                "OUTPOST_SCHEDULER_RECONCILE_LAG_SECONDS": "20",
                "OUTPOST_SCHEDULER_RECONCILE_RETRY_SECONDS": "20",
            },
        )

    async def admin_token(self) -> str:
        env = {**os.environ, **self.env("api")}

        def cli(*args: str) -> str:
            done = subprocess.run(
                [sys.executable, "-m", "cli", "admin", *args],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            )
            return done.stdout.strip()

        await asyncio.to_thread(cli, "create-tenant", TENANT)
        return await asyncio.to_thread(cli, "create-token", "--tenant", TENANT, "--name", "drill")

    async def register(self, n: int) -> tuple[list[str], dict[str, str]]:
        per = PER_PROCESS
        ids = [numbered_device_id(f"p{i // per}", i % per) for i in range(n)]
        slots = asyncio.Semaphore(16)
        started = time.monotonic()

        async def one(device_id: str) -> tuple[str, str]:
            body = {"id": device_id, "hardware_model": "hw1", "group": GROUP, "tags": ["ap"]}
            async with slots:
                got = await self.pool.ok("POST", "/devices", 201, json=body)
            return device_id, got["credentials"]["password"]

        accounts = dict(await asyncio.gather(*(one(d) for d in ids)))
        took = time.monotonic() - started
        self.result["register"] = {"devices": n, "s": round(took, 1), "per_s": round(n / took, 1)}
        log("registered", devices=n, s=round(took, 1))
        return ids, accounts

    def device_specs(
        self, ids: list[str], accounts: dict[str, str], public_key: str
    ) -> list[dict[str, Any]]:
        path = self.root / "accounts.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(accounts if self.per_device else {}))
        where = self.broker.devices()
        if not self.per_device:
            where["username"], where["password"] = self.broker.account("admin")
        prefixes = Counter(d.rsplit("-", 1)[0] for d in ids)
        return [
            {
                "prefix": prefix,
                "count": count,
                "accounts": str(path),
                "broker": where,
                "firmware_key": public_key,
                "seed": self.args.seed * 100 + k,
            }
            for k, (prefix, count) in enumerate(sorted(prefixes.items()))
        ]

    # ---------------------------------------------------------------- phases

    async def phases(self, ids: list[str]) -> None:
        n = len(ids)
        # a database that stops answering fails the drill instead of hanging it
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.mongo_url, timeoutMS=120_000
        )
        self.db = self.client[DB]
        try:
            started = time.monotonic()
            await self.devices.start()
            connected = time.monotonic() - started
            online = await until(
                lambda: self.count(DEVICE_PRESENCE, {"presence.status": "online"}, n),
                600,
                "every device recorded online",
            )
            self.result["connect"] = {
                "s": round(connected, 1),
                "recorded_online_s": round(online, 1),
            }
            log("fleet online", connect_s=round(connected, 1))
            # warm-up rounds are stored and checked like the others, but not timed: a
            # bridge that just joined reads every device's registry entry once (then
            # cached) and, on Mosquitto 2.0.11, is handed the retained presence too
            rounds = 0
            for _ in range(self.args.warmup):
                await self.round(rounds := rounds + 1, n)
            one = [await self.round(rounds := rounds + 1, n) for _ in range(self.args.rounds)]
            self.bridges += [self.bridge(1), self.bridge(2)]
            for proc in self.bridges[1:]:
                await proc.ready()
            for _ in range(self.args.warmup):
                await self.round(rounds := rounds + 1, n)
            three = [await self.round(rounds := rounds + 1, n) for _ in range(self.args.rounds)]
            self.result["throughput"] = {
                "1_bridge_msgs_per_s": round(n / statistics.median(one), 1),
                "3_bridges_msgs_per_s": round(n / statistics.median(three), 1),
                "1_bridge_rounds_s": [round(x, 2) for x in one],
                "3_bridges_rounds_s": [round(x, 2) for x in three],
            }
            log("throughput", **self.result["throughput"])
            rounds = await self.bridge_kill(rounds, n, three[-1])
            self.result["ingest"] = {"rounds": rounds, "messages_stored": rounds * n}
            if self.args.only_ingest:
                return
            await self.config_push(ids)
            await self.rollout(ids)
            await self.verify(ids)
        finally:
            await self.client.close()

    async def count(self, collection: str, query: dict[str, Any], at_least: int) -> bool:
        return await self.db[collection].count_documents(query) >= at_least

    async def round(self, r: int, n: int, kill: tuple[float, Proc] | None = None) -> float:
        """One lock-step round: seconds from the first publish until all stored.

        With ``kill = (delay, bridge)``, ``bridge`` is killed ``delay`` seconds after the
        round's first publish; how many of the round's messages were stored by then is
        logged, and a kill that came after all of them fails the run (not mid-round)."""
        started = time.monotonic()
        publishing = asyncio.create_task(self.devices.ask_all(f"round {r}"))
        query = {"state.counters.drill_round": r}
        killer: asyncio.Task[Kill] | None = None

        async def kill_mid_round(delay: float, victim: Proc) -> Kill:
            await asyncio.sleep(delay)
            got = await self.db[DEVICE_STATUS].count_documents(query)
            if got >= n:
                self.failures.append(f"bridge kill in round {r} came after all {n} were stored")
            at = f"round {r}, {delay:.1f} s after its first publish, {got} of {n} stored"
            return await self.kill_later(victim, 0, "bridge", at, started)

        if kill is not None:
            killer = asyncio.create_task(kill_mid_round(*kill))

        async def stored() -> bool:
            got = await self.db[DEVICE_STATUS].count_documents(query)
            return got >= n and publishing.done()

        try:
            await until(stored, self.args.round_limit_s, f"round {r} stored for every device", 0.5)
        except DrillFailed:
            behind = (
                await self.db[DEVICE_STATUS]
                .find({"state.counters.drill_round": {"$ne": r}}, {"_id": 1})
                .to_list(20)
            )
            raise DrillFailed(
                f"round {r}: not stored for {[d['_id'] for d in behind]} (lost messages?)"
            ) from None
        took = time.monotonic() - started
        sent = sum(a["sent"] for a in await publishing)
        if sent != n:
            raise DrillFailed(f"round {r}: devices sent {sent} of {n} states")
        if killer is not None:
            await killer
            await kill[1].ready()  # type: ignore[index]
        log("round stored", round=r, s=round(took, 2), msgs_per_s=round(n / took, 1))
        return took

    async def kill_later(self, proc: Proc, delay: float, what: str, at: str, t0: float) -> Kill:
        await asyncio.sleep(delay)
        pid = proc.pid
        proc.kill9()
        killed_at = time.monotonic()
        log("killed", what=what, victim=proc.name, pid=pid, at=at)
        pause = self.rng.uniform(1.0, 5.0)
        await asyncio.sleep(pause)
        if what == "scheduler":  # a new instance, as an orchestrator would start
            proc.env["OUTPOST_SCHEDULER_INSTANCE"] += f"-restart{proc.starts}"
        proc.start()
        kill = Kill(what, proc.name, pid, at, round(killed_at - t0, 2), round(pause, 2))
        self.kills.append(kill)
        log("restarted", victim=proc.name, after_s=round(pause, 2))
        return kill

    async def bridge_kill(self, rounds: int, n: int, round_s: float) -> int:
        """Rounds of which one kills a random bridge at a random point: a share, drawn
        from 15-60 %, of the last 3-bridge round's duration after its first publish."""
        kill_round = self.rng.randint(1, self.args.kill_rounds)
        victim = self.rng.choice(self.bridges)
        delay = self.rng.uniform(0.15, 0.6) * round_s
        times = []
        for k in range(1, self.args.kill_rounds + 1):
            rounds += 1
            kill = (delay, victim) if k == kill_round else None
            times.append(await self.round(rounds, n, kill))
        self.result["bridge_kill_rounds_s"] = [round(x, 2) for x in times]
        return rounds

    async def config_push(self, ids: list[str]) -> None:
        n = len(ids)
        victim = self.rng.choice(self.apis)
        kill_after = self.rng.randint(n // 10, max(n // 10, 9 * n // 10))
        answered = 0
        t0 = time.monotonic()
        killer: asyncio.Task[Kill] | None = None
        slots = asyncio.Semaphore(16)
        channels = {d: 1 + i % 11 for i, d in enumerate(ids)}

        async def one(device_id: str) -> None:
            nonlocal answered, killer
            body = {
                "overrides": {
                    "country": "US",
                    "radios": {"2.4GHz": {"channel": channels[device_id]}},
                }
            }
            async with slots:
                await self.pool.ok(
                    "PUT",
                    f"/devices/{device_id}/config/overrides",
                    headers={"If-Match": "*"},
                    json=body,
                )
            answered += 1
            if answered == kill_after:
                at = f"after {answered} of {n} config requests answered"
                killer = asyncio.create_task(self.kill_later(victim, 0, "api", at, t0))

        await asyncio.gather(*(one(d) for d in ids))
        requests_s = time.monotonic() - t0
        if killer is not None:
            await killer
            await victim.ready()
        desired = {
            d["_id"]: d["desired_config"]["version"]
            async for d in self.db[DEVICES].find({}, {"desired_config.version": 1})
        }
        missing = [d for d in ids if desired.get(d) is None]
        if missing:
            raise DrillFailed(f"config: no desired config for {missing[:10]}")
        self.desired = desired

        async def applied() -> bool:
            count = 0
            async for doc in self.db[DEVICE_STATUS].find({}, {"state.config": 1}):
                config = (doc.get("state") or {}).get("config") or {}
                count += config.get("status") == "applied" and config.get("version") == desired.get(
                    doc["_id"]
                )
            return count >= n

        converged = await until(
            applied, self.args.phase_limit_s, "every device applied its config", 3
        )
        self.result["config_push"] = {
            "requests_s": round(requests_s, 1),
            "converged_s": round(time.monotonic() - t0, 1),
            "after_requests_s": round(converged, 1),
            "api_failovers": self.pool.failovers,
            "retries_after_409_locked": self.pool.lock_retries,
        }
        log("config converged", **self.result["config_push"])

    async def rollout(self, ids: list[str]) -> None:
        n = len(ids)
        firmware = await self.pool.ok(
            "POST", "/firmware", 201, json={"version": NEW, "hardware_models": ["hw1"]}
        )
        image = secrets.token_bytes(64 * 1024)
        await self.pool.ok(
            "PUT",
            f"/firmware/{firmware['id']}/image",
            content=image,
            headers={"Content-Type": "application/octet-stream"},
        )
        spec = {
            "firmware": {"id": firmware["id"], "version": NEW},
            "target": {"group": GROUP},
            "waves": {"kind": "fixed", "size": n},
            # below 100 so that a device the health gate fails (e.g. its presence or
            # state update lost, see RESULTS.md) does not pause the rollout: the drill
            # then counts every such device in its invariants instead of stopping
            "success": {"min_success_percent": 90, "wait": "PT30M"},
            "grace_period": "PT120S",
            "max_per_minute": 100_000,
        }
        t0 = time.monotonic()
        rollout = await self.pool.ok("POST", "/rollouts", 201, json=spec)
        self.rollout_id = rollout["id"]
        kill_at = self.rng.randint(max(1, n // 20), max(1, 8 * n // 10))
        sent_query = {"rollout_id": self.rollout_id, "sent_at": {"$ne": None}}
        await until(
            lambda: self.count(JOB_EXECUTIONS, sent_query, kill_at),
            self.args.phase_limit_s,
            f"{kill_at} commands sent",
            0.5,
        )
        holder = await self.lease_holder()
        victim = next(
            (s for s in self.schedulers if s.env["OUTPOST_SCHEDULER_INSTANCE"] == holder), None
        )
        if victim is None:
            raise DrillFailed(f"no scheduler of ours holds the lease ({holder!r})")
        sent = await self.db[JOB_EXECUTIONS].count_documents(sent_query)
        at = f"{sent} of {n} commands sent (drawn: {kill_at}); the lease holder {holder}"
        await self.kill_later(victim, 0, "scheduler", at, t0)
        await victim.ready()

        async def finished() -> bool:
            got = await self.pool.ok("GET", f"/rollouts/{self.rollout_id}")
            status = got["status"]
            if status in ("aborted", "paused", "canceled"):
                raise DrillFailed(f"rollout {status}: {got}")
            return bool(status == "completed")

        await until(finished, self.args.phase_limit_s, "rollout completed", 2)
        took = time.monotonic() - t0
        self.result["rollout"] = {"devices": n, "s": round(took, 1), "per_s": round(n / took, 1)}
        log("rollout completed", **self.result["rollout"])

    async def lease_holder(self) -> str:
        leases = (
            await self.db[SCHEDULER_CLAIMS]
            .find({"_id": {"$regex": f"^lease:.*{self.rollout_id}"}})
            .to_list(None)
        )
        if not leases:
            raise DrillFailed("no lease on the rollout")
        latest = max(leases, key=lambda d: int(str(d["_id"]).rsplit(":", 1)[1]))
        return str(latest["holder"])

    # ---------------------------------------------------------------- invariants

    async def verify(self, ids: list[str]) -> None:
        reports = await self.devices.ask_all("report")
        at_devices: dict[str, Any] = {}
        for report in reports:
            at_devices.update(report["devices"])
        job_ids = {
            e["device_id"]: e["job_id"]
            async for e in self.db[JOB_EXECUTIONS].find({"rollout_id": self.rollout_id})
        }
        commands = Counter(
            sum(1 for job, _ in at_devices[d]["commands"] if job == job_ids.get(d)) for d in ids
        )
        statuses = Counter(
            [
                e["status"]
                async for e in self.db[JOB_EXECUTIONS].find({"rollout_id": self.rollout_id})
            ]
        )
        stored = {d["_id"]: d async for d in self.db[DEVICE_STATUS].find({})}
        present = {d["_id"]: d async for d in self.db[DEVICE_PRESENCE].find({})}
        device_fw = Counter(at_devices[d]["firmware"] for d in ids)
        db_fw = Counter(((stored.get(d) or {}).get("state") or {}).get("firmware") for d in ids)
        config_at_device = sum(at_devices[d]["config"] == self.desired[d] for d in ids)
        config_in_db = sum(
            (((stored.get(d) or {}).get("state") or {}).get("config") or {}).get("version")
            == self.desired[d]
            for d in ids
        )
        online = sum(
            ((present.get(d) or {}).get("presence") or {}).get("status") == "online" for d in ids
        )
        n = len(ids)
        self.result["invariants"] = {
            "commands_per_device": {str(k): v for k, v in sorted(commands.items())},
            "executions": dict(statuses),
            "firmware_at_devices": dict(device_fw),
            "firmware_in_db": {str(k): v for k, v in db_fw.items()},
            "config_applied_at_devices": config_at_device,
            "config_applied_in_db": config_in_db,
            "online_in_db": online,
            "device_stats": _sum_stats(r["stats"] for r in reports),
        }
        checks = {
            "exactly one upgrade command per device": commands == Counter({1: n}),
            "every execution succeeded": statuses == Counter({"succeeded": n}),
            "every device on the target firmware": device_fw == Counter({NEW: n}),
            "the database shows the target firmware": db_fw == Counter({NEW: n}),
            "every device applied its desired config": config_at_device == n,
            "the database shows every config applied": config_in_db == n,
            "every device online in the database": online == n,
        }
        self.failures += [name for name, ok in checks.items() if not ok]
        log("verified", failures=self.failures, **self.result["invariants"])


def _sum_stats(stats: Any) -> dict[str, int]:
    total: Counter[str] = Counter()
    for s in stats:
        total.update(s)
    return dict(total)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load": [round(x, 2) for x in os.getloadavg()],
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="outpost-drill-"))
    os.chmod(root, 0o755)  # Mosquitto drops to its own user, which must reach its folder
    (root / "logs").mkdir()
    broker: Broker = (
        MochiBroker(root / "mochi", root / "logs")
        if args.broker == "mochi"
        else MosquittoBroker(root / "mqtt")
    )
    mongo = database_server(
        root / "db", free_port(), durable=False, external_url=os.environ.get("OUTPOST_MONGO_URL")
    )
    s3 = S3Server(root / "s3", free_port(), secret_key=secrets.token_urlsafe(16))
    drill = Drill(args, root, random.Random(args.seed), broker, mongo.url, s3)
    started = time.monotonic()
    summary: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "devices": args.devices,
        "seed": args.seed,
        "broker": broker.name,
        "accounts": args.accounts if broker.accounts_managed else "none (allow-all)",
    }
    try:
        broker.start()
        mongo.start()
        s3.start()
        await drill.run()
    except DrillFailed as exc:
        drill.failures.append(str(exc))
    except (PyMongoError, OSError, subprocess.SubprocessError, httpx.HTTPError) as exc:
        # reported as the run's failure, after the clean-up below
        drill.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        for proc in drill.procs:
            proc.stop()
        s3.stop()
        mongo.stop()
        broker.stop()
        summary["logs"] = str(root / "logs")
        if not drill.failures and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            summary["logs"] = None
    summary |= {
        "ok": not drill.failures,
        "failures": drill.failures,
        "kills": [k.__dict__ for k in drill.kills],
        **drill.result,
        "total_s": round(time.monotonic() - started, 1),
        "machine": machine(),
    }
    return summary


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        return json.dumps({"t": stamp, "event": record.getMessage(), **fields})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--device-process":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        asyncio.run(device_process(json.loads(sys.argv[2])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--broker", choices=["mosquitto", "mochi"], default="mosquitto")
    parser.add_argument(
        "--accounts",
        choices=["api", "shared"],
        default="api",
        help="api: each device its own broker account, made by the api at registration; "
        "shared: the apis leave the broker alone and devices share one account",
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per bridge count")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds before each")
    parser.add_argument("--kill-rounds", type=int, default=3, help="rounds around the bridge kill")
    parser.add_argument("--round-limit-s", type=float, default=300)
    parser.add_argument("--phase-limit-s", type=float, default=1800)
    parser.add_argument(
        "--only-ingest",
        action="store_true",
        help="stop after the rounds and the bridge kill (no config push, no rollout)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs of a passing run")
    parser.add_argument("--json", type=Path, help="append the summary to this JSON list")
    parsed = parser.parse_args()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json())
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up as on Ctrl-C
    result = asyncio.run(main(parsed))
    sys.stdout.write(json.dumps(result, indent=1) + "\n")
    if parsed.json:
        existing = json.loads(parsed.json.read_text()) if parsed.json.exists() else []
        parsed.json.parent.mkdir(parents=True, exist_ok=True)
        parsed.json.write_text(json.dumps([*existing, result], indent=2) + "\n")
    sys.exit(0 if result["ok"] else 1)
