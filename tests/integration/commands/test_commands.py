"""Device commands end to end: api → broker (the device's own session) → device → bridge.

Devices are simulated (``device.sim``) with their own accounts and ACLs, registered
through the api; the real bridge stores their results; "not delivered" is shown by a probe
command that must come back after the one that must not arrive.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest

from device import commands as dc
from schemas.documents import COMMAND_RESULTS, DEAD_LETTERS
from schemas.protocol import CommandStatus
from schemas.topics import Channel
from tests.integration.commands.conftest import answered, command, observer, until
from tests.integration.scheduler.devices import online_fleet

pytestmark = pytest.mark.integration


async def test_ping_answers_within_two_seconds_and_unknown_commands_say_so(
    db, broker, mongo, s3, unique, prefix
):
    async with online_fleet(db, broker, mongo, s3, unique, 1, prefix=prefix) as rig:
        device = rig.ids[0]
        async with rig.registry.api.client(rig.registry.token) as http:
            started = time.monotonic()
            response = await http.post(
                f"/devices/{device}/commands?wait=2",
                json={"name": "ping", "args": {"target": "192.0.2.1", "count": 3}},
            )
            took = time.monotonic() - started
            assert response.status_code == 200, response.text
            assert took < 2.0
            body = response.json()
            assert body["status"] == "succeeded"
            assert body["result"]["output"]["received"] == 3
            assert len(body["result"]["output"]["rtt_ms"]) == 3

            for name, args in (("scan", {"band": "5GHz"}), ("counters", {}), ("selftest", {})):
                done = await answered(http, device, {"name": name, "args": args})
                result = done["result"]
                if name == "selftest":
                    assert done["status"] == "unknown"
                    assert "unknown command" in result["error"]
                elif name == "scan":
                    assert set(result["output"]["bands"]) == {"5GHz"}
                else:
                    assert "wlan0" in result["output"]["interfaces"]

            invalid = await http.post(
                f"/devices/{device}/commands", json={"name": "ping", "args": {"count": 3}}
            )
            assert invalid.status_code == 422
            assert invalid.headers["content-type"].startswith("application/problem+json")
            listed = (await http.get(f"/devices/{device}/commands")).json()["items"]
            assert [c["name"] for c in listed] == ["selftest", "counters", "scan", "ping"]
            audit = (await http.get("/audit", params={"target": f"device:{device}"})).json()
            assert sum(1 for e in audit["items"] if e["action"] == "command.send") == 4


async def test_reboot_goes_offline_comes_back_and_its_result_is_stored(
    db, broker, mongo, s3, unique, prefix
):
    async with online_fleet(db, broker, mongo, s3, unique, 1, prefix=prefix) as rig:
        device = rig.ids[0]
        sim = rig.fleet.device(device)
        session = sim.seq.session
        async with (
            observer(broker, f"devices/{device}/presence") as (_, seen),
            rig.registry.api.client(rig.registry.token) as http,
        ):
            reboot = await answered(http, device, {"name": "reboot"})
            assert reboot["status"] == "succeeded"
            assert reboot["result"]["output"] == {"rebooting": True}

            async def back() -> bool:
                said = [(json.loads(p)["status"], json.loads(p).get("reason")) for _, p, _ in seen]
                if ("offline", "reboot") not in said:
                    return False
                return ("online", None) in said[said.index(("offline", "reboot")) :]

            await until(back, 15, "offline (reboot), then online again")
            assert sim.seq.session == session + 1
            await until(lambda: rig.recorded([device], online=True), 15, "online recorded")
            stored = await db[COMMAND_RESULTS].find_one({"_id": reboot["id"]})
            assert stored["status"] == "succeeded"
            assert stored["device_id"] == device


async def test_offline_device_gets_its_command_when_back_and_an_expired_one_never(
    db, broker, mongo, s3, unique, prefix
):
    async with online_fleet(db, broker, mongo, s3, unique, 2, prefix=prefix) as rig:
        late, early = rig.ids
        await rig.go_offline(rig.ids)
        async with rig.registry.api.client(rig.registry.token) as http:
            kept = await http.post(
                f"/devices/{late}/commands",
                json={"name": "ping", "args": {"target": "192.0.2.1"}, "expires_in_s": 120},
            )
            gone = await http.post(
                f"/devices/{early}/commands",
                json={"name": "ping", "args": {"target": "192.0.2.1"}, "expires_in_s": 2},
            )
            assert kept.status_code == gone.status_code == 202
            assert kept.json()["status"] == gone.json()["status"] == "sent"
            kept_id, gone_id = kept.json()["id"], gone.json()["id"]

            async def expired() -> bool:
                return (await command(http, early, gone_id))["status"] == "expired"

            await until(expired, 10, "the short command to expire")
            # the broker's expiry interval was rounded down to whole seconds and its clock
            # ticks in seconds: past one more second it has dropped the message too
            deadline = datetime.fromisoformat(gone.json()["expires_at"]).timestamp() + 1.0
            await until(lambda: _past(deadline), 5, "the broker's clock past the deadline")
            await rig.come_back(rig.ids)

            async def delivered() -> bool:
                return (await command(http, late, kept_id))["status"] == "succeeded"

            await until(delivered, 15, "the queued command answered after coming back")
            probe = await answered(
                http, early, {"name": "ping", "args": {"target": "192.0.2.1", "count": 1}}
            )
            assert probe["status"] == "succeeded"  # everything queued before it is in
            assert rig.fleet.device(early).commands == [probe["id"]]
            assert (await command(http, early, gone_id))["status"] == "expired"
            assert await db[COMMAND_RESULTS].find_one({"_id": gone_id}) is None


async def test_a_one_mib_log_is_uploaded_to_s3_and_fetched_through_the_api(
    db, broker, mongo, s3, unique, prefix
):
    size = 1024 * 1024
    async with online_fleet(db, broker, mongo, s3, unique, 1, prefix=prefix, log_bytes=size) as rig:
        device = rig.ids[0]
        async with rig.registry.api.client(rig.registry.token) as http:
            body = await answered(http, device, {"name": "logs"})
            assert body["status"] == "succeeded"
            log = body["log"]
            assert log["size"] == size
            assert log["key"] == f"logs/{rig.registry.tenant}/{device}/{body['id']}.log"
            again = await command(http, device, body["id"])
            assert again["log"]["sha256"] == log["sha256"]
        data = await asyncio.to_thread(_fetch, again["log"]["url"])
        assert len(data) == size
        assert hashlib.sha256(data).hexdigest() == log["sha256"]
        assert data == dc.simulated_log(device, size)


async def _past(timestamp: float) -> bool:
    return datetime.now(UTC).timestamp() > timestamp


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
    return body


async def test_a_device_cannot_answer_another_devices_command(
    db, broker, mongo, s3, unique, prefix
):
    """Its own result topic with the other device's command id: refused by the bridge
    (the command is not this device's); the other device's topic: refused by the ACL."""
    async with online_fleet(db, broker, mongo, s3, unique, 2, prefix=prefix) as rig:
        victim, rogue = rig.ids
        async with rig.registry.api.client(rig.registry.token) as http:
            # a command that the victim only gets once it is back: nobody has answered yet
            await rig.go_offline([victim])
            sent = await http.post(
                f"/devices/{victim}/commands",
                json={"name": "ping", "args": {"target": "192.0.2.1"}},
            )
            command_id = sent.json()["id"]
            forged = dc.result(
                rogue,
                rig.fleet.device(rogue).seq.next_key(),
                datetime.now(UTC),
                command_id,
                CommandStatus.FAILED,
                error="forged",
            )
            sim = rig.fleet.device(rogue)
            assert await sim._send(
                Channel.COMMAND_RESULT, forged, job_id=command_id
            )  # accepted by the broker: it is the rogue's own result topic

            async def refused() -> Any:
                return await db[DEAD_LETTERS].find_one({"reason": "unknown_command"})

            letter = await until(refused, 10, "the forged result dead-lettered")
            assert command_id in letter["detail"]
            assert (await command(http, victim, command_id))["status"] == "sent"
            await rig.come_back([victim])

            async def real_answer() -> bool:
                return (await command(http, victim, command_id))["status"] == "succeeded"

            await until(real_answer, 15, "the real answer")
