"""Device accounts for tests, registered through the api as an admin would.

Everything device-side in the integration tests (the reference agent, the simulated
fleet, the raw MQTT devices) connects with the account ``POST /devices`` returned: the
device id as client id and username, its own password, and the per-device ACL the api
set up at the broker. So every path exercises the ACL a real device lives under.

:class:`Registry` runs the api in-process (its lifespan connects to the real broker) on
the test's own database; the api writes the registry documents, the tests never do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from api.app import create_app
from api.auth import Role
from api.broker_admin import delete_device_commands
from device.sim import Broker
from schemas.topics import Channel, topic
from tests.integration.api.conftest import Api, api_settings, eventually

__all__ = ["Registry"]


class Registry:
    """The api of one test database; ``register`` returns each device's password."""

    def __init__(
        self,
        broker: Any,
        mongo: Any,
        s3: Any,
        database: str,
        tenant: str = "t1",
        *,
        clean_broker: bool = True,
    ) -> None:
        self.broker = broker
        self.tenant = tenant
        self._clean_broker = clean_broker  # False: the broker is the test's own, and goes
        self.passwords: dict[str, str] = {}
        # a loaded machine's broker may take seconds to store an account: wait for it
        self._app = create_app(api_settings(broker, mongo, s3, database, broker_timeout_s=30))
        self._lifespan: contextlib.AbstractAsyncContextManager[Any] | None = None
        self._api: Api | None = None
        self._token = ""

    async def __aenter__(self) -> Registry:
        self._lifespan = self._app.router.lifespan_context(self._app)
        state = await self._lifespan.__aenter__()
        self._api = Api(self._app, state["app"])
        await eventually(lambda: self.api.state.link.connected)
        self._token = await self.api.token(self.tenant, Role.ADMIN)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._lifespan is not None
        try:
            if not self._clean_broker:
                return
            # The broker outlives the test: the devices' retained messages go (every bridge
            # started later would be handed them), and so do their accounts, a
            # few per control message (not one round trip per device).
            ids = list(self.passwords)
            link = self.api.state.link
            await asyncio.gather(
                *(
                    link.publish(topic(channel, d), b"", retain=True)
                    for d in ids
                    for channel in (Channel.PRESENCE, Channel.CONFIG)
                )
            )
            for start in range(0, len(ids), 10):
                commands = [c for d in ids[start : start + 10] for c in delete_device_commands(d)]
                await self.api.state.link.control(commands)
        finally:
            await self._lifespan.__aexit__(kind, exc, tb)

    @property
    def token(self) -> str:
        """An admin token of the registry's tenant, for a test's own api calls."""
        return self._token

    @property
    def api(self) -> Api:
        assert self._api is not None, "use Registry as an async context manager"
        return self._api

    async def group(self, name: str) -> None:
        async with self.api.client(self._token) as http:
            response = await http.post("/groups", json={"name": name})
            assert response.status_code == 201, response.text

    async def register(
        self,
        ids: Iterable[str],
        *,
        group: str | None = None,
        tags: Sequence[str] = (),
        hardware_model: str = "hw1",
        concurrency: int = 8,
    ) -> dict[str, str]:
        """``POST /devices`` for each id; returns ``{device id: password}``."""
        slots = asyncio.Semaphore(concurrency)
        async with self.api.client(self._token) as http:

            async def one(device_id: str) -> tuple[str, str]:
                body: dict[str, Any] = {
                    "id": device_id,
                    "hardware_model": hardware_model,
                    "tags": list(tags),
                }
                if group is not None:
                    body["group"] = group
                async with slots:
                    response = await http.post("/devices", json=body)
                assert response.status_code == 201, response.text
                return device_id, response.json()["credentials"]["password"]

            got = dict(await asyncio.gather(*(one(d) for d in ids)))
        self.passwords.update(got)
        return got

    def fleet_broker(self) -> Broker:
        """Where simulated devices connect: over TLS verified with the local CA, each with
        its own account."""
        return Broker(
            "127.0.0.1",
            self.broker.tls_port,
            tls=True,
            ca_file=str(self.broker.ca_file),
            accounts=dict(self.passwords),
        )
