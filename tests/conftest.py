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
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from deploy.local import ExternalMongo, MongoServer, Mosquitto, S3Server, database_server, free_port
from deploy.local.process import use_port_range

PORTS_PER_WORKER = 2000


def pytest_configure(config: pytest.Config) -> None:
    """Each test process takes its servers' ports from a range of its own (gw0:
    20000-21999, gw1: 22000-23999, ...) below the kernel's ephemeral range, never one
    the kernel may also hand to another worker or to an outgoing connection before our
    server binds it. Where the ephemeral range leaves no room, the kernel picks."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = 20_000 + (int(worker) if worker.isdigit() else 0) * PORTS_PER_WORKER
    try:
        ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except OSError:
        return
    if first + PORTS_PER_WORKER <= int(ephemeral[0]):
        use_port_range(first, first + PORTS_PER_WORKER - 1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked ``slow`` first (otherwise in collection order): the parallel
    workers take tests in this order, so the longest start early and the run does not end
    with one worker busy on a minute-long test while the other is idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


@pytest.fixture(scope="module", autouse=True)
def _clear_retained_device_topics(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each integration module, clear what its devices left retained on the shared
    broker (presence, state). Mosquitto 2.0.11 hands retained messages to every new
    shared subscription, so a later test's bridge would otherwise be given devices it
    does not know (counted as unknown, or written as extra updates)."""
    if request.node.get_closest_marker("integration") is None:
        yield
        return
    broker: Mosquitto = request.getfixturevalue("broker")
    yield
    clear_retained(broker, ["devices/+/presence", "devices/+/state"])


def clear_retained(broker: Mosquitto, filters: list[str], quiet_s: float = 0.3) -> int:
    """Publish an empty retained message on every topic under ``filters`` that holds one;
    returns how many. Retained messages arrive right after the SUBACK, so the collection
    ends once none came for ``quiet_s``."""
    topics: set[str] = set()
    last = [time.monotonic()]

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if message.retain and message.payload:
            topics.add(message.topic)
        last[0] = time.monotonic()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"clear-{secrets.token_hex(4)}", protocol=paho.MQTTv5
    )
    subscribed = threading.Semaphore(0)

    def on_subscribe(*args: object) -> None:
        last[0] = time.monotonic()
        subscribed.release()

    client.username_pw_set(broker.backend_username, broker.backend_password)
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for topic_filter in filters:
            client.subscribe(topic_filter, qos=0)
        for _ in filters:
            assert subscribed.acquire(timeout=10), "no SUBACK from the broker"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and time.monotonic() - last[0] < quiet_s:
            time.sleep(0.05)
        sent = [client.publish(t, b"", qos=1, retain=True) for t in sorted(topics)]
        for info in sent:
            info.wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()
    return len(topics)


@pytest.fixture
def unique() -> str:
    """A short random token for topic subtrees, device ids and object keys of one test."""
    return secrets.token_hex(4)
