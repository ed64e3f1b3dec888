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
import logging
import os
import signal
from typing import Any

import pytest

from api.auth import Role
from outpost.store import Store
from tests.integration.bridge.helpers import private_mongo
from tests.integration.services import Service, service_env

pytestmark = pytest.mark.integration
LOG = logging.getLogger("test.fail_fast")


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
        env = service_env(broker, server.url, db.name, s3, unique)
        services = [
            Service(c, env, tmp_path / f"{c}.log", broker=broker)
            for c in ("bridge", "scheduler", "api")
        ]
        pid = server.running_pid()
        assert pid is not None
        frozen = False
        try:
            for service in services:
                await asyncio.to_thread(service.wait_ready, 30)
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
            for service in services:  # ready again
                await asyncio.to_thread(service.wait_ready, 60)
            assert (await asyncio.to_thread(api.get, "/devices", token))[0] == 200
        finally:
            if frozen:
                os.kill(pid, signal.SIGCONT)
            for service in services:
                service.stop()
