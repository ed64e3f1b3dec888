"""The demo ``outpost dev up`` ends with: a tenant, registered devices, a simulated fleet.

Everything goes through public interfaces, as a newcomer would do it by hand: the
``outpost admin`` commands for the tenant and its first token, the REST api to register
devices, ``outpost sim`` for the fleet, and the api again to watch the bridge mark the
devices online in MongoDB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.local.errors import StartFailed
from schemas.topics import numbered_device_id

TENANT = "demo"


@dataclass(frozen=True)
class Api:
    url: str
    token: str

    def call(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def _outpost(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise StartFailed(f"outpost {' '.join(args)} failed: {result.stderr.strip()[-300:]}")
    return result.stdout.strip()


def _still_valid(api_url: str, token: str) -> bool:
    """Whether the api accepts ``token`` (401: revoked, expired or from an older database)."""
    try:
        status, body = Api(api_url, token).call("GET", "/tenant")
    except (urllib.error.URLError, OSError) as exc:
        raise StartFailed(f"the api at {api_url} did not answer: {exc}") from None
    if status not in (200, 401):
        raise StartFailed(f"checking the demo token failed: {status} {body}")
    return status == 200


def admin_token(root: Path, env: dict[str, str], api_url: str) -> str:
    """The demo tenant's admin token, kept in ``root/demo-token``: made on the first run,
    and made again when the api no longer accepts the kept one (someone revoked it), so
    ``outpost dev up`` always ends with a working token."""
    path = root / "demo-token"
    if path.exists():
        token = path.read_text().strip()
        if _still_valid(api_url, token):
            return token
        path.unlink()
    try:
        _outpost(env, "admin", "create-tenant", TENANT, "--name", "Demo fleet")
    except StartFailed as exc:
        if "exists" not in str(exc) and "duplicate" not in str(exc).lower():
            raise
    token = _outpost(env, "admin", "create-token", "--tenant", TENANT, "--name", "dev-up")
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


def device_ids(prefix: str, count: int) -> list[str]:
    """The ids ``outpost sim --prefix`` uses."""
    return [numbered_device_id(prefix, n) for n in range(count)]


def register(api: Api, ids: list[str], accounts_file: Path) -> int:
    """Register the devices that are not registered yet and keep every device's password
    in ``accounts_file`` (0600) for ``outpost sim``; returns how many were new.

    A device registered before whose password is not in the file (the file was deleted)
    gets a new one through the api's credential rotation, so this is always idempotent.
    """
    accounts: dict[str, str] = {}
    if accounts_file.exists():
        accounts = json.loads(accounts_file.read_text())
    new = 0
    for device_id in ids:
        status, body = api.call(
            "POST",
            "/devices",
            {"id": device_id, "hardware_model": "sim-ap-1", "group": None, "tags": ["demo"]},
        )
        if status == 201:
            new += 1
            accounts[device_id] = body["credentials"]["password"]
        elif status == 409 and device_id not in accounts:
            status, body = api.call("POST", f"/devices/{device_id}/credentials")
            if status != 200:
                raise StartFailed(f"new credentials for {device_id} failed: {status} {body}")
            accounts[device_id] = body["password"]
        elif status != 409:
            raise StartFailed(f"registering {device_id} failed: {status} {body}")
    accounts_file.parent.mkdir(parents=True, exist_ok=True)
    accounts_file.touch(mode=0o600)
    accounts_file.chmod(0o600)
    accounts_file.write_text(json.dumps(accounts, indent=1))
    return new


def wait_online(api: Api, expected: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Poll the api until ``expected`` demo devices are online; returns them."""
    deadline = time.monotonic() + timeout
    online: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status, body = api.call("GET", "/devices?online=true&tag=demo&limit=200")
        if status == 200:
            online = body["items"]
            if len(online) >= expected:
                return online
        time.sleep(0.5)
    raise StartFailed(
        f"only {len(online)} of {expected} simulated devices came online "
        f"within {timeout:.0f}s; see .outpost/*/*.log"
    )
