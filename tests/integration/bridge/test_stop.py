"""SIGTERM while MongoDB is away: the bridge leaves at its stop deadline, loses nothing."""

from __future__ import annotations

import asyncio
import signal

import pytest

from deploy.local import free_port
from schemas.documents import DEVICE_STATUS

from .helpers import (
    Publisher,
    bridge_env,
    eventually,
    http_get,
    private_mongo,
    spawn_bridge,
    state_payload,
    wait_ready,
)

pytestmark = pytest.mark.integration


async def _stored(db, n: int, count: int) -> bool:
    return await db[DEVICE_STATUS].count_documents({"state.counters.n": n}) == count


async def test_sigterm_during_an_outage_leaves_at_the_deadline_then_a_restart_catches_up(
    broker, servers_root, unique, tmp_path
):
    ids = [f"d{unique}-{i}" for i in range(20)]
    pub = Publisher(broker, f"p{unique}")
    port = free_port()
    log = tmp_path / "bridge.log"
    proc = None
    try:
        async with private_mongo(servers_root, unique, ids) as (server, db):
            env = {
                **bridge_env(broker, server, db.name, unique, instance="0", http_port=port),
                "OUTPOST_BRIDGE_STOP_TIMEOUT_S": "2",
                "OUTPOST_LOG_LEVEL": "INFO",
            }
            proc = spawn_bridge(env, log)
            await wait_ready(port, proc)
            for dev in ids:
                pub.publish(f"devices/{dev}/state", state_payload(dev, 1, 1, n=1))
            await pub.flushed(10)
            await eventually(lambda: _stored(db, 1, len(ids)), within=30, what="first states")

            server.stop()
            for dev in ids:
                pub.publish(f"devices/{dev}/state", state_payload(dev, 1, 2, n=2))
            await pub.flushed(10)

            async def retrying() -> bool:
                status, _ = await asyncio.to_thread(http_get, port, "/readyz")
                return status == 503

            await eventually(retrying, within=20, what="/readyz 503")

            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 15)  # the write retries for ever
            text = log.read_text()
            assert code == 0, text[-2000:]
            assert "stop timeout: batch left unacknowledged" in text

            server.start()
            proc = spawn_bridge(env, log)  # same instance: its session holds the messages
            await wait_ready(port, proc)
            await eventually(lambda: _stored(db, 2, len(ids)), within=60, what="catch-up")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        pub.close()
