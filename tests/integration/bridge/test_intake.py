"""The bridge's MQTT intake, inline and in a child process, on a real Mosquitto.

Both sources must keep the session's promise the bridge builds on: a message is gone
from the session only once acknowledged. The child process must also never outlive its
bridge, and its death must stop the bridge with an error, not a silent stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from pathlib import Path

import pytest

from bridge.app import Running, run_bridge
from bridge.errors import MqttError
from bridge.inbound import Inbound, Source
from bridge.mqtt_process import ProcessSource
from bridge.mqtt_source import MqttSource, SessionOptions
from deploy.local import free_port
from outpost.mqtt import paho_client
from outpost.settings import MqttSettings
from schemas.topics import Channel, subscription

from .helpers import (
    LOG,
    Publisher,
    bridge_env,
    eventually,
    http_get,
    metric,
    private_mongo,
    running_bridge,
    settings,
    spawn_bridge,
    state_payload,
    wait_ready,
)

pytestmark = pytest.mark.integration

SOURCES = {"inline": MqttSource, "process": ProcessSource}


def _source(kind: str, broker, unique: str) -> MqttSource | ProcessSource:
    cfg = settings(broker, "mongodb://unused", "unused", unique)
    session = SessionOptions(
        f"t{unique}-intake",
        (subscription(Channel.STATE, f"g{unique}"),),
        session_expiry_s=60,
        receive_maximum=100,
    )
    return SOURCES[kind](cfg.mqtt, session, logger=LOG)


async def _take(source: Source, n: int) -> list[Inbound]:
    taken: list[Inbound] = []
    async with asyncio.timeout(20):
        while len(taken) < n:
            item = await source.messages.get()
            assert item is not None, f"end marker after {len(taken)} of {n} messages"
            taken.append(item)
    return taken


def _ns(items: list[Inbound]) -> list[bytes]:
    return [i.payload for i in items]


@pytest.mark.parametrize("kind", sorted(SOURCES))
async def test_only_acknowledged_messages_leave_the_session(kind, broker, unique):
    pub = Publisher(broker, f"p{unique}")
    payloads = [state_payload(f"d{unique}", 1, seq, n=seq) for seq in range(1, 11)]
    try:
        async with _source(kind, broker, unique) as source:
            for payload in payloads:
                pub.publish(f"devices/d{unique}/state", payload)
            await pub.flushed(10)
            first = await _take(source, 10)
            assert _ns(first) == payloads  # all of them, in order
            assert all(source.ack(i) for i in first[:4])
            source.close_intake()
            assert await source.messages.get() is None
        # The same client id resumes the session: only the six not acknowledged come back.
        async with _source(kind, broker, unique) as source:
            again = await _take(source, 6)
            assert _ns(again) == payloads[4:]
            assert all(source.ack(i) for i in again)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    await source.messages.get()
        async with _source(kind, broker, unique) as source:
            with pytest.raises(TimeoutError):  # all ten acknowledged: nothing comes back
                async with asyncio.timeout(1):
                    await source.messages.get()
    finally:
        pub.close()


async def test_a_message_of_an_earlier_connection_is_not_acknowledged(broker, unique):
    pub = Publisher(broker, f"p{unique}")
    try:
        async with _source("process", broker, unique) as source:
            pub.publish(f"devices/d{unique}/state", state_payload(f"d{unique}", 1, 1))
            await pub.flushed(10)
            (item,) = await _take(source, 1)
            stale = Inbound(
                item.topic,
                item.payload,
                item.mid,
                item.qos,
                item.retain,
                item.generation - 1,
                item.received_at,
                item.received_mono,
            )
            assert not source.ack(stale)
            assert source.ack(item)
    finally:
        pub.close()


@pytest.mark.parametrize("kind", sorted(SOURCES))
async def test_the_intake_process_shows_its_cpu_and_memory(kind, broker, servers_root, unique):
    async with private_mongo(servers_root, unique, [f"d{unique}"]) as (server, db):
        cfg = settings(broker, server.url, db.name, unique, intake=kind)
        async with running_bridge(cfg) as (running, _):
            status, text = await asyncio.to_thread(http_get, running.http_port, "/metrics")
    assert status == 200
    cpu = "outpost_bridge_intake_process_cpu_seconds_total"
    memory = "outpost_bridge_intake_process_resident_memory_bytes"
    if kind == "process":  # the child imported paho and pydantic: CPU and memory spent
        assert metric(text, cpu) > 0
        assert metric(text, memory) > 10_000_000
    else:
        assert cpu not in text
    assert metric(text, "process_cpu_seconds_total") > 0  # the parent's, either way


def _take_over(mqtt: MqttSettings, client_id: str) -> None:
    """Connect once with ``client_id`` (the broker drops the other connection), then leave."""
    client = paho_client(mqtt.endpoint(), client_id)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(mqtt.host, mqtt.port)
    client.loop_start()
    try:
        assert connected.wait(10), "the take-over client did not connect"
    finally:
        client.disconnect()
        client.loop_stop()


async def test_a_failing_callback_fails_the_intake_instead_of_stalling(broker, unique):
    async with _source("process", broker, unique) as source:

        def broken(*connected: object) -> None:
            raise RuntimeError("a bug in a callback")

        source.on_connected = broken
        # Another connection with the same client id drops the child's; the child
        # reconnects, and its CONNACK runs the broken callback in the parent.
        mqtt = settings(broker, "mongodb://unused", "unused", unique).mqtt
        await asyncio.to_thread(_take_over, mqtt, source.client_id)
        async with asyncio.timeout(20):
            assert await source.messages.get() is None  # the end marker, not a stall
        assert isinstance(source.failure, MqttError)
        assert "a bug in a callback" in str(source.failure)


def _intake_children(pid: int) -> list[int]:
    """The intake processes among ``pid``'s children (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                if b"bridge.mqtt_process" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
    return found


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


async def test_the_intake_leaves_when_its_bridge_is_killed(broker, servers_root, unique, tmp_path):
    port = free_port()
    async with private_mongo(servers_root, unique, [f"d{unique}"]) as (server, db):
        env = bridge_env(broker, server, db.name, unique, instance="0", http_port=port)
        proc = spawn_bridge(env, tmp_path / "bridge.log")
        try:
            await wait_ready(port, proc)
            (child,) = _intake_children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL

            async def gone() -> bool:
                return not _running(child)

            await eventually(gone, within=10, what="the orphaned intake process to exit")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_a_dead_intake_stops_the_bridge_with_an_error(broker, servers_root, unique, caplog):
    caplog.set_level(logging.ERROR, logger=LOG.name)
    async with private_mongo(servers_root, unique, [f"d{unique}"]) as (server, db):
        cfg = settings(broker, server.url, db.name, unique)
        started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            run_bridge(cfg, LOG, handle_signals=False, on_started=started.set_result)
        )
        try:
            async with asyncio.timeout(20):
                await started
            (child,) = _intake_children(os.getpid())
            os.kill(child, signal.SIGKILL)
            async with asyncio.timeout(10):  # the bridge stops on its own, with the error
                with pytest.raises(MqttError, match="intake process exited"):
                    await task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, MqttError):
                await task
    assert "mqtt intake process exited" in caplog.text
