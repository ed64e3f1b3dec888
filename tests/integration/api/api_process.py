"""A real ``outpost api`` process on a free loopback port, for tests that talk HTTP to it
(schemathesis, the generated client): ``async with running_api(...) as api``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from pymongo import AsyncMongoClient

from api.auth import Role, new_token
from api.store import tenants
from deploy.local import free_port
from tests.integration.api.conftest import FIRMWARE_SIGNING_KEY


@dataclass(frozen=True)
class RunningApi:
    url: str
    token: str  # an admin token of tenant "t"
    log: Path


def api_env(broker, mongo, s3, database: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "OUTPOST_MQTT_URL": broker.url,
        "OUTPOST_MQTT_USERNAME": broker.account("api")[0],
        "OUTPOST_MQTT_PASSWORD": broker.account("api")[1],
        "OUTPOST_API_FIRMWARE_SIGNING_KEY": FIRMWARE_SIGNING_KEY,
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


async def wait_ready(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with asyncio.timeout(30), httpx.AsyncClient() as client:
        while True:
            if proc.returncode is not None:
                tail = (await asyncio.to_thread(log.read_text))[-3000:]
                raise AssertionError(f"outpost api exited:\n{tail}")
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


async def admin_token(mongo, database: str) -> str:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo.url)
    try:
        db = client[database]
        await tenants.create_tenant(db, "t", "t")  # type: ignore[arg-type]
        token = new_token()
        await tenants.create_token(db, token, "t", Role.ADMIN, "test", None)  # type: ignore[arg-type]
        return token.secret
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def running_api(broker, mongo, s3, folder: Path) -> AsyncIterator[RunningApi]:
    """The api as ``python -m cli api`` runs it, in a database of its own (dropped after)."""
    database = f"api_{secrets.token_hex(4)}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = folder / "api.log"
    with log_path.open("w") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli",
            "api",
            cwd=folder,
            env=api_env(broker, mongo, s3, database, port),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            await wait_ready(url, proc, log_path)
            yield RunningApi(url, await admin_token(mongo, database), log_path)
        finally:
            if proc.returncode is None:
                proc.terminate()
            async with asyncio.timeout(20):
                await proc.wait()
            client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo.url)
            await client.drop_database(database)
            await client.close()
