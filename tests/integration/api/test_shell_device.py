"""The shell-script device (device/shell/outpost-device.sh) against the real broker over
TLS, registered through the api: it listens as ``{id}/listen`` and reports as ``{id}`` at
the same time, applies its config, refuses an upgrade, and its presence follows the
listener (its Last Will)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from api.auth import Role
from tests.integration.api.conftest import Api

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parents[3] / "device" / "shell" / "outpost-device.sh"


class Watcher:
    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seen: list[tuple[str, dict]] = []

    async def next(self, suffix: str, within: float = 15.0, **fields: object) -> dict:
        """The next message on ``…/{suffix}`` whose payload has ``fields``."""
        async with asyncio.timeout(within):
            async for message in self.client.messages:
                body = json.loads(message.payload) if message.payload else {}
                self.seen.append((str(message.topic), body))
                if str(message.topic).endswith(suffix) and all(
                    body.get(k) == v for k, v in fields.items()
                ):
                    return body
        raise AssertionError("unreachable")


def start(device_id: str, password: str, broker, state_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OUTPOST_DEVICE_ID": device_id,
        "OUTPOST_DEVICE_PASSWORD": password,
        "OUTPOST_BROKER_HOST": "127.0.0.1",
        "OUTPOST_BROKER_PORT": str(broker.tls_port),
        "OUTPOST_CA_FILE": str(broker.ca_file),
        "OUTPOST_STATE_DIR": str(state_dir),
    }
    log = (state_dir.parent / f"{device_id}.log").open("ab")
    return subprocess.Popen(
        ["sh", str(SCRIPT)], env=env, stdout=log, stderr=log, start_new_session=True
    )


async def test_shell_script_device_listens_and_reports_at_once(api: Api, broker, unique, tmp_path):
    device_id = f"sh-{unique}"
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        template = {"country": "US", "radios": {"2.4GHz": {}}}
        made = await http.post("/groups", json={"name": "g", "template": template})
        assert made.status_code == 201, made.text
        registered = await http.post(
            "/devices", json={"id": device_id, "hardware_model": "shell-ap", "group": "g"}
        )
        assert registered.status_code == 201, registered.text
        password = registered.json()["credentials"]["password"]
        config = (await http.get(f"/devices/{device_id}/config")).json()

    user, secret = broker.account("admin")
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=user,
        password=secret,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(f"devices/{device_id}/#", qos=1)
        watcher = Watcher(client)
        proc = start(device_id, password, broker, tmp_path / "device")
        try:
            online = await watcher.next("/presence", status="online")
            assert online["key"]["session"] == 1
            # the retained config reached the listener; the reporter acknowledged it
            state = await watcher.next("/state")
            while not state.get("config"):
                state = await watcher.next("/state")
            assert state["config"] == {
                "version": config["version"],
                "hash": config["hash"],
                "status": "applied",
            }
            stored = json.loads((tmp_path / "device" / "config.json").read_text())
            assert stored["country"] == "US"

            job = {
                "v": 1,
                "job_id": "j1",
                "firmware": {
                    "version": "9.9.9",
                    "size": 1,
                    "sha256": "0" * 64,
                    "url": "https://example.net/fw.bin",
                    "url_expires_at": "2099-01-01T00:00:00Z",
                },
                "issued_at": "2026-11-30T00:00:00Z",
            }
            await client.publish(f"devices/{device_id}/jobs/j1", json.dumps(job), qos=1)
            refused = await watcher.next("/jobs/j1/status", status="rejected")
            assert refused["reason"] == "this device installs no firmware"

            # presence follows the listener: killed without a goodbye, its Will says so
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            gone = await watcher.next("/presence", status="offline")
            assert gone["reason"] == "connection_lost"
            assert gone["key"] == {"session": 1, "seq": 2**53 - 1}

            # the next boot is a new session; a stop says goodbye itself
            proc = start(device_id, password, broker, tmp_path / "device")
            back = await watcher.next("/presence", status="online")
            assert back["key"]["session"] == 2
            await watcher.next("/state")
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
            bye = await watcher.next("/presence", status="offline")
            assert (bye["reason"], bye["key"]["session"]) == ("shutdown", 2)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        async with api.client(token) as http:  # retained topics cleared: no trace for others
            assert (await http.delete(f"/devices/{device_id}")).status_code == 204
        keys = [
            (b["key"]["session"], b["key"]["seq"])
            for t, b in watcher.seen
            if "key" in b and not t.endswith("/jobs/j1")
        ]
        assert keys == sorted(keys)  # every report newer than the one before
