"""A typed client generated from ``/openapi.json`` compiles under mypy and drives a flow.

The client is generated here, at test time, from the document the api serves (not
committed): whatever the api says today is what the client is checked against, and
there is no second copy to keep in step. See api/README.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.api.api_process import running_api

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
FLOW = Path(__file__).parent / "generated_client" / "flow.py"
CONFIG = {
    "project_name_override": "outpost_client",
    "package_name_override": "outpost_client",
    "post_hooks": [],  # no formatting of the generated code
}


def run(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


async def test_generated_client_type_checks_and_drives_a_flow(broker, mongo, s3, tmp_path, unique):
    async with running_api(broker, mongo, s3, tmp_path) as api:
        async with httpx.AsyncClient() as http:
            document = (await http.get(f"{api.url}/openapi.json")).json()
        (tmp_path / "openapi.json").write_text(json.dumps(document))
        (tmp_path / "config.json").write_text(json.dumps(CONFIG))
        await asyncio.to_thread(generate_and_check, tmp_path)
        image = hashlib.sha256(unique.encode()).digest() * 100
        rollout = await asyncio.to_thread(drive, tmp_path, api.url, api.token, unique, image)
    assert rollout.spec["target"]["device_ids"] == [f"typed-{unique}"]


def generate_and_check(folder: Path) -> None:
    run(
        str(BIN / "openapi-python-client"),
        "generate",
        "--path",
        "openapi.json",
        "--config",
        "config.json",
        "--meta",
        "none",
        "--output-path",
        "outpost_client",
        "--fail-on-warning",
        cwd=folder,
    )
    shutil.copy(FLOW, folder / "flow.py")
    run(
        str(BIN / "mypy"),
        "--strict",
        "--no-incremental",
        "--config-file",
        "/dev/null",
        "outpost_client",
        "flow.py",
        cwd=folder,
    )


def drive(folder: Path, url: str, token: str, unique: str, image: bytes):
    """The flow, with the generated client imported from ``folder`` (then forgotten)."""
    sys.path.insert(0, str(folder))
    try:
        client_module = importlib.import_module("outpost_client")
        flow = importlib.import_module("flow")
        client = client_module.AuthenticatedClient(
            base_url=url, token=token, raise_on_unexpected_status=True, timeout=httpx.Timeout(30)
        )
        with client:
            return flow.flow(client, f"typed-{unique}", image)
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m == "flow" or m.startswith("outpost_client")]:
            del sys.modules[name]
