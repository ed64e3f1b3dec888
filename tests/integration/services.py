"""Our services as processes of a test's own (``python -m cli <command>``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from deploy.local import Mosquitto, free_port

REPO = Path(__file__).resolve().parents[2]
PROBE_S = 3.0  # what an orchestrator would give a readiness probe


class Service:
    """``python -m cli <command>`` as a process of the test's own."""

    def __init__(
        self,
        command: str,
        env: dict[str, str],
        log: Path,
        port: int | None = None,
        *,
        broker: Mosquitto,
    ) -> None:
        self.command = command
        self.log = log
        self.port = port or free_port()
        username, password = broker.account(command)  # each service its own broker role
        account = {"OUTPOST_MQTT_USERNAME": username, "OUTPOST_MQTT_PASSWORD": password}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", command],
                env={**os.environ, **env, **account, "OUTPOST_HTTP_PORT": str(self.port)},
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

    def assert_alive(self) -> None:
        """Fails naming how the process ended and the end of its log, if it did."""
        code = self.proc.poll()
        if code is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-20:]
            raise AssertionError(
                f"{self.command} (pid {self.proc.pid}, port {self.port}) exited with {code}:\n"
                + "\n".join(tail)
            )

    def wait_ready(self, within: float = 30.0) -> None:
        """Until this process (not another on its port) answers ``/readyz`` with 200."""
        deadline = time.monotonic() + within
        while True:
            self.assert_alive()
            try:
                if self.get("/readyz")[0] == 200:
                    self.assert_alive()  # the answer came from our process, still running
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.command} not ready within {within:.0f} s ({self.log})")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def service_env(
    broker: Mosquitto, mongo_url: str, database: str, s3: Any, unique: str
) -> dict[str, str]:
    return {
        "OUTPOST_MQTT_URL": broker.url,
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
