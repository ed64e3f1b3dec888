"""``outpost dev up | status | down`` as a newcomer runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local import PidFile, free_port

pytestmark = pytest.mark.integration


def _outpost(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "outpost", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def test_up_twice_status_down(servers_root: Path) -> None:
    root = servers_root / "dev-stack"
    env = {**os.environ, "OUTPOST_DEV_ROOT": str(root),
           "OUTPOST_DEV_MQTT_PORT": str(free_port()), "OUTPOST_DEV_MONGO_PORT": str(free_port()),
           "OUTPOST_DEV_S3_PORT": str(free_port()), "COLUMNS": "200"}
    try:
        first = _outpost(env, "dev", "up")
        assert first.returncode == 0, first.stderr
        second = _outpost(env, "dev", "up")
        assert second.returncode == 0, second.stderr
        assert second.stderr.count("already running") == 3

        status = _outpost(env, "dev", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        for name in ("mosquitto", "mongodb", "s3"):
            assert any(name in line and "healthy" in line for line in status.stdout.splitlines())
        pids = [PidFile(root / name / f"{name}.pid").live_pid()
                for name in ("mosquitto", "mongodb", "s3")]
        assert all(pids)
        assert "OUTPOST_MQTT_URL=mqtt://127.0.0.1:" in (root / "dev.env").read_text()
    finally:
        down = _outpost(env, "dev", "down")
    assert down.returncode == 0, down.stderr
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z"
    assert _outpost(env, "dev", "status").returncode == 1


def test_busy_port_is_one_clear_line(servers_root: Path) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        env = {**os.environ, "OUTPOST_DEV_ROOT": str(servers_root / "busy"),
               "OUTPOST_DEV_MQTT_PORT": str(port), "COLUMNS": "300"}
        result = _outpost(env, "dev", "up")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"port {port} for mosquitto is already in use" in result.stderr
    assert "OUTPOST_DEV_MQTT_PORT" in result.stderr
