"""Property-based run of the OpenAPI spec against the running api (a real ``outpost api``
process on a free port): no 5xx, and every response conforms to the documented schema."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pymongo import AsyncMongoClient

from api.auth import Role, new_token
from api.store import tenants
from deploy.local import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)


def api_env(broker, mongo, s3, database: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "OUTPOST_MQTT_URL": broker.url,
        "OUTPOST_MQTT_USERNAME": broker.backend_username,
        "OUTPOST_MQTT_PASSWORD": broker.backend_password,
        "OUTPOST_MONGO_URL": mongo.url,
        "OUTPOST_MONGO_DATABASE": database,
        "OUTPOST_S3_ENDPOINT_URL": s3.url,
        "OUTPOST_S3_BUCKET": s3.bucket,
        "OUTPOST_S3_ACCESS_KEY_ID": s3.access_key,
        "OUTPOST_S3_SECRET_ACCESS_KEY": s3.secret_key,
        "OUTPOST_HTTP_HOST": "127.0.0.1",
        "OUTPOST_HTTP_PORT": str(port),
        "OUTPOST_LOG_LEVEL": "WARNING",
    }


async def wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(30), httpx.AsyncClient() as client:
        while True:
            assert proc.returncode is None, "outpost api exited"
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


async def admin_token(mongo, database: str) -> str:
    client = AsyncMongoClient(mongo.url)
    try:
        db = client[database]
        await tenants.create_tenant(db, "fuzz", "fuzz")
        token = new_token()
        await tenants.create_token(db, token, "fuzz", Role.ADMIN, "fuzz", None)
        return token.secret
    finally:
        await client.close()


async def test_openapi_property_run_finds_no_5xx_or_schema_violation(broker, mongo, s3, tmp_path):
    database = f"fuzz_{secrets.token_hex(4)}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "api.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "api",
        cwd=tmp_path,
        env=api_env(broker, mongo, s3, database, port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_ready(url, proc)
        token = await admin_token(mongo, database)
        started = time.monotonic()
        fuzz = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS),
            "run",
            f"{url}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            "8",
            "--seed",
            "1",
            "--no-shrink",
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "-H",
            f"Authorization: Bearer {token}",
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(400):
                output, _ = await fuzz.communicate()
        finally:
            if fuzz.returncode is None:
                fuzz.kill()
                await fuzz.wait()
        report = output.decode(errors="replace")[-6000:]
        logging.getLogger(__name__).warning(
            "schemathesis took %.0fs\n%s", time.monotonic() - started, report
        )
        assert fuzz.returncode == 0, report
    finally:
        proc.terminate()
        async with asyncio.timeout(20):
            await proc.wait()
        log.close()
        client = AsyncMongoClient(mongo.url)
        await client.drop_database(database)
        await client.close()
    errors = (tmp_path / "api.log").read_text()
    assert "unhandled error" not in errors, errors[-3000:]
