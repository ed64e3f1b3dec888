"""The api in-process against the session's real broker, database and S3.

Each test gets its own database; the lifespan runs (so the api connects to the real
broker) and requests go through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from api.app import Settings, create_app
from api.auth import Role, new_token
from api.settings import ApiSettings
from api.state import AppState
from api.store import tenants
from outpost.settings import MongoSettings, MqttSettings, S3Settings
from outpost.signing import new_private_key
from schemas.documents import ROLLOUT_PROGRESS

pytestmark = pytest.mark.integration


FIRMWARE_SIGNING_KEY = new_private_key()  # this test run's; the dev stack makes its own


def api_settings(broker: Any, mongo: Any, s3: Any, database: str, **api: Any) -> Settings:
    api.setdefault("firmware_signing_key", FIRMWARE_SIGNING_KEY)
    return Settings(
        mqtt=MqttSettings(
            url=broker.url,
            username=broker.account("api")[0],
            password=broker.account("api")[1],
        ),
        mongo=MongoSettings(url=mongo.url, database=database),
        s3=S3Settings(
            endpoint_url=s3.url,
            bucket=s3.bucket,
            access_key_id=s3.access_key,
            secret_access_key=s3.secret_key,
        ),
        api=ApiSettings(**api),
    )


@dataclass
class Api:
    app: Any
    state: AppState

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=self._with_state)
        return httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=headers, timeout=30
        )

    async def _with_state(self, scope: Any, receive: Any, send: Any) -> None:
        scope["state"] = {"app": self.state}
        await self.app(scope, receive, send)

    async def token(self, tenant_id: str, role: Role) -> str:
        if await tenants.get_tenant(self.state.db, tenant_id) is None:
            await tenants.create_tenant(self.state.db, tenant_id, tenant_id)
        token = new_token()
        await tenants.create_token(self.state.db, token, tenant_id, role, role.value, None)
        return token.secret


async def scheduler_finished(api: Api, rollout_id: str, status: str) -> None:
    """Stand in for the scheduler: it ended the rollout with ``status``."""
    await api.state.db[ROLLOUT_PROGRESS].insert_one(
        {
            "_id": rollout_id,
            "status": status,
            "settled": True,
            "progress": {},
            "updated_at": datetime.now(UTC),
        }
    )


async def eventually(condition: Callable[[], Any], within: float = 10.0) -> None:
    """Poll ``condition`` until true; TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def api(broker: Any, mongo: Any, s3: Any) -> AsyncIterator[Api]:
    database = f"api_{secrets.token_hex(5)}"
    app = create_app(api_settings(broker, mongo, s3, database))
    async with app.router.lifespan_context(app) as state:
        handle = Api(app, state["app"])
        await eventually(lambda: handle.state.link.connected)
        try:
            yield handle
        finally:
            await handle.state.db.db.client.drop_database(database)
