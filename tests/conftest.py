"""Test harness: real servers on free loopback ports, started once per test session.

Integration tests (marked ``integration``) take the ``broker``, ``mongo`` and ``s3``
fixtures; each test then works in a database and a topic subtree of its own. Nothing
needs to run beforehand: the servers are started by the same code as ``outpost dev up``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from deploy.local import ExternalMongo, MongoServer, Mosquitto, S3Server, database_server, free_port


@pytest.fixture(scope="session")
def servers_root() -> Iterator[Path]:
    # Not pytest's tmp_path: its folders are private to root, and Mosquitto drops to the
    # ``mosquitto`` user, which must reach its own folder.
    root = Path(tempfile.mkdtemp(prefix="outpost-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def broker(servers_root: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(
        servers_root / "mosquitto", free_port(), backend_password=secrets.token_urlsafe(12)
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo(servers_root: Path) -> Iterator[MongoServer | ExternalMongo]:
    """FerretDB on a private PostgreSQL cluster, or the MongoDB ``OUTPOST_MONGO_URL`` names."""
    server = database_server(
        servers_root / "mongodb",
        free_port(),
        durable=False,
        external_url=os.environ.get("OUTPOST_MONGO_URL"),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(servers_root: Path) -> Iterator[S3Server]:
    server = S3Server(servers_root / "s3", free_port(), secret_key=secrets.token_urlsafe(16))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def mongo_db(mongo: MongoServer) -> AsyncIterator[AsyncDatabase[dict[str, object]]]:
    """A fresh database for one test, dropped afterwards."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo.url)
    name = f"t_{secrets.token_hex(6)}"
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


@pytest.fixture
def unique() -> str:
    """A short random token for topic subtrees, device ids and object keys of one test."""
    return secrets.token_hex(4)
