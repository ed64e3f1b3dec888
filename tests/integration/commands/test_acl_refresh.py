"""An account made before device commands existed gets their topics in place."""

from __future__ import annotations

import pytest

from api.broker_admin import BrokerAdmin, device_acls, role_name
from tests.integration.api.mqtt_clients import DeviceClient, in_thread
from tests.integration.registry import Registry

pytestmark = pytest.mark.integration
NOT_AUTHORIZED = 135


async def test_refresh_gives_an_older_account_the_command_topics(db, broker, mongo, s3, unique):
    device = f"old-{unique}"
    async with Registry(broker, mongo, s3, db.name) as registry:
        password = (await registry.register([device]))[device]
        link = registry.api.state.link
        command_acls = [a for a in device_acls(device) if "/commands/" in a["topic"]]
        assert len(command_acls) == 3
        removed = await link.control(
            [
                {
                    "command": "removeRoleACL",
                    "rolename": role_name(device),
                    "acltype": a["acltype"],
                    "topic": a["topic"],
                }
                for a in command_acls
            ]
        )
        assert not any(r.get("error") for r in removed), removed
        result = f"devices/{device}/commands/c1/result"

        def publish_result() -> int:
            client = DeviceClient("127.0.0.1", broker.port, device, password)
            try:
                assert not client.connect().is_failure
                return int(client.publish(result, b"{}").value)
            finally:
                client.close()

        assert await in_thread(publish_result) == NOT_AUTHORIZED  # as an older account
        assert await BrokerAdmin(link).refresh_acls([device]) == 3
        assert await in_thread(publish_result) < 128  # accepted now
        assert await BrokerAdmin(link).refresh_acls([device]) == 0  # nothing missing
