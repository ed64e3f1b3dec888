"""Fail fast, report truthfully (issue 13, item 7).

- A database that hangs (FerretDB SIGSTOPped: connections stay open, nothing answers):
  every service's ``/readyz`` and the api's requests answer 503 naming the database
  within the probe budget (3 s here, a functional timeout of the client), and recover
  when it thaws.

The broker side (presence "unknown" after a broker kill) is in
``tests/integration/api/test_presence_after_broker_kill.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from api.auth import Role
from deploy.local import Mosquitto, free_port
from outpost.store import Store
from tests.integration.bridge.helpers import eventually, private_mongo

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("test.fail_fast")
PROBE_S = 3.0  # what an orchestrator would give a readiness probe


class Service:
    """``python -m cli <command>`` as a process of the test's own."""

    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.command = command
        self.port = free_port()
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", command],
                env={**os.environ, **env, "OUTPOST_HTTP_PORT": str(self.port)},
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str, token: str | None = None) -> tuple[int, Any, float]:
        """Status, JSON body (or text) and seconds taken; raises if no answer in PROBE_S."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=PROBE_S) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        took = time.monotonic() - started
        try:
            return status, json.loads(raw), took
        except ValueError:
            return status, raw.decode(), took

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _env(broker: Mosquitto, mongo_url: str, database: str, s3: Any, unique: str) -> dict[str, str]:
    return {
        "OUTPOST_MQTT_URL": broker.url,
        "OUTPOST_MQTT_USERNAME": broker.backend_username,
        "OUTPOST_MQTT_PASSWORD": broker.backend_password,
        "OUTPOST_MQTT_CLIENT_ID_PREFIX": f"ff{unique}",
        "OUTPOST_MONGO_URL": mongo_url,
        "OUTPOST_MONGO_DATABASE": database,
        "OUTPOST_S3_ENDPOINT_URL": s3.url,
        "OUTPOST_S3_BUCKET": s3.bucket,
        "OUTPOST_S3_ACCESS_KEY_ID": s3.access_key,
        "OUTPOST_S3_SECRET_ACCESS_KEY": s3.secret_key,
        "OUTPOST_BRIDGE_SHARE_GROUP": f"ff{unique}",
        "OUTPOST_SCHEDULER_INSTANCE": f"ff{unique}",
        "OUTPOST_HTTP_HOST": "127.0.0.1",
        "OUTPOST_LOG_LEVEL": "WARNING",
    }


async def _token(db: Any, tenant: str) -> str:
    from api.auth import new_token
    from api.store import tenants

    store = Store(db)
    await tenants.create_tenant(store, tenant, tenant)
    token = new_token()
    await tenants.create_token(store, token, tenant, Role.VIEWER, "probe", None)
    return token.secret


async def test_a_frozen_database_gets_503_naming_it_from_every_service_within_3_s(
    broker, s3, servers_root, unique, tmp_path
):
    async with private_mongo(servers_root, f"ff{unique}", [f"d{unique}"]) as (server, db):
        token = await _token(db, f"t{unique}")
        env = _env(broker, server.url, db.name, s3, unique)
        services = [Service(c, env, tmp_path / f"{c}.log") for c in ("bridge", "scheduler", "api")]
        pid = server.running_pid()
        assert pid is not None
        frozen = False
        try:
            for service in services:

                async def ready(service: Service = service) -> bool:
                    assert service.proc.poll() is None, f"{service.command} exited"
                    try:
                        return (await asyncio.to_thread(service.get, "/readyz"))[0] == 200
                    except OSError:
                        return False

                await eventually(ready, within=30, what=f"{service.command} ready")
            api = services[-1]
            assert (await asyncio.to_thread(api.get, "/devices", token))[0] == 200

            os.kill(pid, signal.SIGSTOP)  # the database process this test started
            frozen = True
            for service in services:
                status, body, took = await asyncio.to_thread(service.get, "/readyz")
                LOG.warning("%s /readyz, database frozen: %.2f s", service.command, took)
                assert status == 503, body
                assert "mongo" in body["failing"], body
                assert body["checks"]["mqtt"] is True
            status, body, took = await asyncio.to_thread(api.get, "/devices", token)
            LOG.warning("api GET /devices, database frozen: %.2f s", took)
            assert status == 503
            assert "database" in body["detail"]
            status, metrics, _ = await asyncio.to_thread(services[0].get, "/metrics")
            assert 'outpost_dependency_up{dependency="mongo"} 0.0' in metrics

            os.kill(pid, signal.SIGCONT)
            frozen = False
            for service in services:

                async def thawed(service: Service = service) -> bool:
                    return (await asyncio.to_thread(service.get, "/readyz"))[0] == 200

                await eventually(thawed, within=60, what=f"{service.command} ready again")
            assert (await asyncio.to_thread(api.get, "/devices", token))[0] == 200
        finally:
            if frozen:
                os.kill(pid, signal.SIGCONT)
            for service in services:
                service.stop()
