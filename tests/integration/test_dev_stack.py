"""``outpost dev up | status | down`` as a newcomer runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from deploy.local import PidFile, free_port
from deploy.local.process import start_ticks

pytestmark = pytest.mark.integration


def _outpost(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # run beside the stack's folder: a ./.outpost/dev.env left in the checkout (by a real
    # `outpost dev up`) must not leak its settings into the test
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=Path(env["OUTPOST_DEV_ROOT"]).parent,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _call(url: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{url}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def revoke_with_another_admin(url: str, token: str) -> None:
    """What locks a newcomer out: the demo token revoked (by another admin token, since a
    token cannot revoke itself)."""
    status, me = _call(url, token, "POST", "/tokens", {"name": "other", "role": "admin"})
    assert status == 201, me
    _, listed = _call(url, token, "GET", "/tokens")
    demo_id = next(t["token_id"] for t in listed["items"] if t["name"] == "dev-up")
    status, body = _call(url, me["token"], "DELETE", f"/tokens/{demo_id}")
    assert status == 204, body
    assert _call(url, token, "GET", "/tenant")[0] == 401


@pytest.mark.slow
def test_up_twice_status_down(servers_root: Path) -> None:
    root = servers_root / "dev-stack"
    env = {
        **os.environ,
        "OUTPOST_DEV_ROOT": str(root),
        "COLUMNS": "200",
        "OUTPOST_DEV_DEMO_DEVICES": "4",
        **{
            f"OUTPOST_DEV_{name}_PORT": str(free_port())
            for name in ("MQTT", "MONGO", "S3", "API", "BRIDGE", "SCHEDULER", "PROMETHEUS")
        },
    }
    names = ("mosquitto", "mongodb", "s3", "prometheus", "bridge", "api", "scheduler", "sim")
    try:
        first = _outpost(env, "dev", "up")
        assert first.returncode == 0, first.stderr
        assert "4 devices registered" in first.stderr
        assert "4 simulated devices online in MongoDB" in first.stderr
        demo_token = (root / "demo-token").read_text().strip()
        revoke_with_another_admin(f"http://127.0.0.1:{env['OUTPOST_DEV_API_PORT']}", demo_token)

        second = _outpost(env, "dev", "up")  # recovers: a new demo token
        assert second.returncode == 0, second.stderr
        assert second.stderr.count("already running") == 7
        assert "0 devices registered (4 already were)" in second.stderr
        assert (root / "demo-token").read_text().strip() != demo_token

        status = _outpost(env, "dev", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        for name in names:
            assert any(name in line and "healthy" in line for line in status.stdout.splitlines())
        pids = [PidFile(root / name / f"{name}.pid").live_pid() for name in names]
        assert all(pids)
        started = {pid: start_ticks(pid) for pid in pids if pid}
        assert "OUTPOST_MQTT_URL=mqtt://127.0.0.1:" in (root / "dev.env").read_text()
        _scraped(int(env["OUTPOST_DEV_PROMETHEUS_PORT"]))
    finally:
        down = _outpost(env, "dev", "down")
    assert down.returncode == 0, down.stderr
    for pid, ticks in started.items():  # gone (or its number already reused by another)
        assert start_ticks(pid) != ticks
    assert _outpost(env, "dev", "status").returncode == 1


def _scraped(port: int) -> None:
    """Prometheus scrapes bridge, api and scheduler (each target up)."""
    import json
    import time
    import urllib.request

    url = f"http://127.0.0.1:{port}/api/v1/query?query=up%3D%3D1"
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(url, timeout=5) as response:
            result = json.load(response)["data"]["result"]
        jobs = {r["metric"]["job"] for r in result}
        if jobs >= {"outpost-bridge", "outpost-api", "outpost-scheduler"}:
            return
        assert time.monotonic() < deadline, f"targets up: {jobs}"
        time.sleep(0.5)


def test_busy_port_is_one_clear_line(servers_root: Path) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        env = {
            **os.environ,
            "OUTPOST_DEV_ROOT": str(servers_root / "busy"),
            "OUTPOST_DEV_MQTT_PORT": str(port),
            "COLUMNS": "300",
        }
        result = _outpost(env, "dev", "up")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"port {port} for mosquitto is already in use" in result.stderr
    assert "OUTPOST_DEV_MQTT_PORT" in result.stderr
