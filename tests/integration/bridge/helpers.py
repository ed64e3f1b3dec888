"""Helpers for the bridge's integration tests: publishers, raw MQTT devices, a bridge runner.

``RawDevice`` speaks just enough MQTT v5 over asyncio streams (CONNECT with a Last Will,
PUBLISH QoS 1, PINGREQ) that thousands fit in one test process, and can drop its TCP
connection without a DISCONNECT so the broker fires its will.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bridge.app import Running, Settings, run_bridge
from bridge.config import BridgeSettings
from bridge.metrics import BridgeMetrics
from deploy.local import MongoServer, Mosquitto, free_port
from outpost.settings import HttpSettings, MongoSettings, MqttSettings
from schemas.protocol import WILL_SEQ

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[3]
LOG = logging.getLogger("test.bridge")


# -- payloads ------------------------------------------------------------------------


def state_payload(device: str, session: int, seq: int, n: int = 0, **extra: Any) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "device_id": device,
            "key": {"session": session, "seq": seq},
            "firmware": "1.0.0",
            "hardware_model": "ap-1",
            "counters": {"n": n},
            **extra,
        }
    ).encode()


def presence_payload(
    device: str, session: int, seq: int, status: str, reason: str | None = None
) -> bytes:
    body: dict[str, Any] = {
        "v": 1,
        "device_id": device,
        "status": status,
        "key": {"session": session, "seq": seq},
    }
    if reason:
        body["reason"] = reason
    return json.dumps(body).encode()


# -- waiting -------------------------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[bool]],
    *,
    within: float,
    interval: float = 0.2,
    what: str = "condition",
) -> None:
    """Poll ``check`` until true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str) -> float:
    """Sum of the samples of ``name`` in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- settings / bridge runners -------------------------------------------------------


def settings(
    broker: Mosquitto,
    mongo_url: str,
    database: str,
    unique: str,
    *,
    instance: str = "0",
    session_expiry_s: int = 30,
    **bridge: Any,
) -> Settings:
    return Settings(
        mqtt=MqttSettings(
            url=broker.url,
            username=broker.account("bridge")[0],
            password=broker.account("bridge")[1],
            client_id_prefix=f"t{unique}",
        ),
        mongo=MongoSettings(url=mongo_url, database=database),
        bridge=BridgeSettings(
            instance=instance, share_group=f"g{unique}", session_expiry_s=session_expiry_s, **bridge
        ),
        http=HttpSettings(host=HOST, port=0),
    )


@contextlib.asynccontextmanager
async def running_bridge(cfg: Settings) -> AsyncIterator[tuple[Running, BridgeMetrics]]:
    """An in-process bridge; stopped (flush, ack, disconnect) on exit."""
    metrics = BridgeMetrics()
    started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_bridge(cfg, LOG, metrics=metrics, handle_signals=False, on_started=started.set_result),
        name="bridge",
    )
    try:
        async with asyncio.timeout(20):
            await asyncio.wait(
                [started, task],  # type: ignore[type-var]
                return_when=asyncio.FIRST_COMPLETED,
            )
        if task.done():
            task.result()  # raise its error
        running = started.result()
        yield running, metrics
    finally:
        if started.done():
            started.result().bridge.stop()
        else:
            task.cancel()
        async with asyncio.timeout(30):
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def private_mongo(
    root: Path, unique: str, ids: list[str]
) -> AsyncIterator[tuple[MongoServer, Any]]:
    """A database server of the test's own (to stop and start), holding devices ``ids``."""
    from pymongo import AsyncMongoClient

    server = MongoServer(root / f"mongo-{unique}", free_port())
    server.start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.url)
    db = client[f"t{unique}"]
    try:
        await db["devices"].insert_many([{"_id": i} for i in ids])
        yield server, db
    finally:
        await client.close()
        server.stop()  # its data lives under root, removed with it


def bridge_env(
    broker: Mosquitto,
    mongo: MongoServer,
    database: str,
    unique: str,
    *,
    instance: str,
    http_port: int,
) -> dict[str, str]:
    return {
        **os.environ,
        "OUTPOST_MQTT_URL": broker.url,
        "OUTPOST_MQTT_USERNAME": broker.account("bridge")[0],
        "OUTPOST_MQTT_PASSWORD": broker.account("bridge")[1],
        "OUTPOST_MQTT_CLIENT_ID_PREFIX": f"t{unique}",
        "OUTPOST_MONGO_URL": mongo.url,
        "OUTPOST_MONGO_DATABASE": database,
        "OUTPOST_BRIDGE_INSTANCE": instance,
        "OUTPOST_BRIDGE_SHARE_GROUP": f"g{unique}",
        "OUTPOST_BRIDGE_SESSION_EXPIRY_S": "300",
        "OUTPOST_HTTP_HOST": HOST,
        "OUTPOST_HTTP_PORT": str(http_port),
        "OUTPOST_LOG_LEVEL": "WARNING",
    }


def spawn_bridge(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "bridge"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def wait_ready(
    port: int, proc: subprocess.Popen[bytes] | None = None, within: float = 20
) -> None:
    async def ready() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"bridge exited with {proc.returncode}")
        try:
            return (await asyncio.to_thread(http_get, port, "/readyz"))[0] == 200
        except OSError:
            return False

    await eventually(ready, within=within, what="bridge /readyz")


# -- a fast publisher (one paho client, many devices' topics) ------------------------


class Publisher:
    """Publishes QoS 1 messages and waits until the broker acknowledged all of them.

    A load generator: one client publishing for thousands of devices, so it uses the
    backend's account (no device account may publish outside its own subtree). Tests of
    what a device can do use :class:`RawDevice`, the simulator or the agent instead.
    """

    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        self._acked = 0
        self._sent = 0
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self._client.username_pw_set(broker.backend_username, broker.backend_password)
        self._client.max_inflight_messages_set(500)
        self._client.max_queued_messages_set(0)
        self._client.on_publish = self._on_publish
        self._client.connect(HOST, broker.port)
        self._client.loop_start()

    def _on_publish(self, *args: Any) -> None:
        with self._lock:
            self._acked += 1

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain)
        self._sent += 1

    async def flushed(self, within: float = 60) -> None:
        async def done() -> bool:
            with self._lock:
                return self._acked >= self._sent

        await eventually(done, within=within, interval=0.05, what="PUBACKs")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# -- raw MQTT v5 devices -------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def publish_packet(topic: str, packet_id: int, payload: bytes, *, retain: bool = False) -> bytes:
    """An MQTT v5 QoS 1 PUBLISH (no properties)."""
    body = _str(topic) + struct.pack("!H", packet_id) + b"\x00" + payload
    return _packet(0x32 | (1 if retain else 0), body)


def connect_packet(
    client_id: str,
    username: str,
    password: str,
    keepalive: int = 600,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    """An MQTT v5 CONNECT with clean start, user name and password, and ``will`` (topic,
    payload; retained, QoS 1) if given."""
    flags = 0x80 | 0x40 | 0x02  # user name, password, clean start
    will_part = b""
    if will is not None:
        flags |= 0x20 | 0x08 | 0x04  # will retain, will QoS 1, will flag
        will_part = b"\x00" + _str(will[0]) + _str(will[1])  # no will properties
    body = (
        _str("MQTT")
        + bytes([5, flags])
        + struct.pack("!H", keepalive)
        + b"\x00"
        + _str(client_id)
        + will_part
        + _str(username)
        + _str(password)
    )
    return _packet(0x10, body)


class RawDevice:
    """One simulated device: connects with an offline Last Will, announces itself online.

    With ``password`` (what its registration through the api returned) it logs in as
    itself, under its own ACL. Without, it uses the backend's account: only the
    5,000-device will storm does that, since registering thousands of broker accounts
    costs minutes (the dynamic-security plugin rewrites its whole file per command).
    """

    def __init__(
        self,
        broker: Mosquitto,
        device_id: str,
        session: int,
        keepalive: int = 600,
        password: str | None = None,
    ) -> None:
        self.broker = broker
        self.device_id = device_id
        self.session = session
        self.keepalive = keepalive
        self.username = device_id if password else broker.backend_username
        self.password = password or broker.backend_password
        self.pings = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._next_id = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def topic(self) -> str:
        return f"devices/{self.device_id}/presence"

    def _connect_packet(self) -> bytes:
        will = presence_payload(
            self.device_id, self.session, WILL_SEQ, "offline", "connection_lost"
        )
        return connect_packet(
            self.device_id, self.username, self.password, self.keepalive, will=(self.topic, will)
        )

    async def connect(self, online: bool = True) -> None:
        self._reader, self._writer = await asyncio.open_connection(HOST, self.broker.port)
        self._writer.write(self._connect_packet())
        first, body = await self._read()
        if first >> 4 != 2 or body[1] != 0:
            raise AssertionError(f"{self.device_id}: CONNACK {body[:2]!r}")
        self._tasks = [asyncio.create_task(self._read_loop(), name=f"rx-{self.device_id}")]
        if self.keepalive < 60:
            self._tasks.append(
                asyncio.create_task(self._ping_loop(), name=f"ping-{self.device_id}")
            )
        if online:
            await self.publish(
                self.topic, presence_payload(self.device_id, self.session, 1, "online"), retain=True
            )

    async def _read(self) -> tuple[int, bytes]:
        assert self._reader is not None
        first = (await self._reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await self._reader.readexactly(1))[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, await self._reader.readexactly(length)

    async def _read_loop(self) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                first, body = await self._read()
                if first >> 4 == 4:  # PUBACK
                    future = self._acks.pop(struct.unpack("!H", body[:2])[0], None)
                    if future is not None and not future.done():
                        future.set_result(None)
                elif first >> 4 == 13:  # PINGRESP
                    self.pings += 1

    async def _ping_loop(self) -> None:
        with contextlib.suppress(ConnectionError):
            while self._writer is not None:
                await asyncio.sleep(self.keepalive / 2)
                self._writer.write(b"\xc0\x00")

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        assert self._writer is not None
        self._next_id = self._next_id % 65535 + 1
        future = asyncio.get_running_loop().create_future()
        self._acks[self._next_id] = future
        self._writer.write(publish_packet(topic, self._next_id, payload, retain=retain))
        async with asyncio.timeout(30):
            await future

    def drop(self) -> None:
        """Close TCP without DISCONNECT: the broker publishes the Last Will."""
        for task in self._tasks:
            task.cancel()
        if self._writer is not None:
            self._writer.transport.abort()
            self._writer = None

    async def close(self) -> None:
        """Graceful: DISCONNECT (no will)."""
        for task in self._tasks:
            task.cancel()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.write(b"\xe0\x00")
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
