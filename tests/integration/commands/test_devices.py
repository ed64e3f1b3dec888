"""Commands on the reference agent (every built-in) and on the shell-script device (reboot
and ping), registered through the api, results stored by the real bridge."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.api.test_shell_device import start as start_shell
from tests.integration.bridge.helpers import running_bridge
from tests.integration.bridge.helpers import settings as bridge_settings
from tests.integration.commands.conftest import answered, observer, until
from tests.integration.device.agents import agent_config, start_thread_agent
from tests.integration.registry import Registry

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def stack(db, broker, mongo, s3, unique) -> AsyncIterator[Registry]:
    async with (
        Registry(broker, mongo, s3, db.name) as registry,
        running_bridge(bridge_settings(broker, mongo.url, db.name, unique)),
    ):
        yield registry


def presence_said(seen: list) -> list[tuple[str, Any, int]]:
    out = []
    for _, payload, _ in seen:
        body = json.loads(payload) if payload else {}
        if "status" in body:
            out.append((body["status"], body.get("reason"), body["key"]["session"]))
    return out


async def test_reference_agent_runs_every_builtin_command(
    db, broker, mongo, s3, unique, tmp_path: Path
):
    device = f"ag-{unique}"
    log_file = tmp_path / "agent.log"
    log_file.write_bytes(b"boot\n" * 1000)
    async with stack(db, broker, mongo, s3, unique) as registry:
        password = (await registry.register([device]))[device]
        state_file = tmp_path / "state.json"
        config = agent_config(broker, device, password, state_file, log_file=log_file)
        async with observer(broker, f"devices/{device}/presence") as (_, seen):
            agent = start_thread_agent(config)
            try:
                await until(
                    lambda: _async([s for s in presence_said(seen) if s[0] == "online"]),
                    20,
                    "the agent online",
                )
                async with registry.api.client(registry.token) as http:

                    async def run(name: str, **args: Any) -> dict[str, Any]:
                        return await answered(http, device, {"name": name, "args": args})

                    ping = await run("ping", target="127.0.0.1", count=2)
                    assert ping["status"] == "succeeded", ping
                    assert ping["result"]["output"]["received"] >= 1
                    counters = await run("counters", interface="lo")
                    assert set(counters["result"]["output"]["interfaces"]) == {"lo"}
                    scan = await run("scan", band="5GHz")
                    assert scan["result"]["output"] == {"bands": {"5GHz": []}}
                    assert (await run("selftest"))["status"] == "unknown"
                    bad = await run("counters", interface="nope0")
                    assert bad["status"] == "failed"
                    logs = await run("logs")
                    assert logs["status"] == "succeeded", logs
                    data = await asyncio.to_thread(_fetch, logs["log"]["url"])
                    assert data == log_file.read_bytes()
                    assert hashlib.sha256(data).hexdigest() == logs["log"]["sha256"]

                    reboot = await run("reboot")
                    assert reboot["status"] == "succeeded"

                    async def rebooted() -> bool:
                        said = presence_said(seen)
                        return ("offline", "reboot", 1) in said and ("online", None, 2) in said

                    await until(rebooted, 20, "offline (reboot), then back in session 2")
                    assert reboot["id"] in json.loads(state_file.read_text())["commands"]
            finally:
                agent.close()


async def _async(value: Any) -> Any:
    return value


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
    return body


async def test_shell_device_answers_ping_and_reboots(db, broker, mongo, s3, unique, tmp_path):
    device = f"sh-{unique}"
    async with stack(db, broker, mongo, s3, unique) as registry:
        password = (await registry.register([device]))[device]
        async with observer(broker, f"devices/{device}/presence") as (_, seen):
            proc = start_shell(device, password, broker, tmp_path / "device")
            try:
                await until(
                    lambda: _async(("online", None, 1) in presence_said(seen)),
                    20,
                    "the shell device online",
                )
                async with registry.api.client(registry.token) as http:
                    ping = await answered(
                        http, device, {"name": "ping", "args": {"target": "127.0.0.1", "count": 2}}
                    )
                    output = ping["result"]["output"]
                    assert output["sent"] == 2
                    assert output["received"] == len(output["rtt_ms"]) == 2
                    unknown = await answered(http, device, {"name": "scan"})
                    assert unknown["status"] == "unknown"
                    reboot = await answered(http, device, {"name": "reboot"})
                    assert reboot["status"] == "succeeded", reboot

                async def rebooted() -> bool:
                    said = presence_said(seen)
                    return ("offline", "reboot", 1) in said and ("online", None, 2) in said

                await until(rebooted, 20, "offline (reboot), then back in session 2")
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
