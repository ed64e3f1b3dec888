"""The foundation's promises about the real servers the harness starts."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiomqtt
import paho.mqtt.client as paho
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion
from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError
from pymongo.monitoring import CommandListener, CommandStartedEvent

from deploy.local import MongoServer, Mosquitto, S3Server, free_port, mqtt_connack
from deploy.local.tls import local_ca
from outpost.mqtt import Endpoint, aiomqtt_client
from outpost.store import WRITE_LOCKS, Insert, Server, Store, Update, Write

pytestmark = pytest.mark.integration


def _paho_publish_retained(broker: Mosquitto, topic: str, payload: bytes) -> None:
    published = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.username_pw_set(broker.backend_username, broker.backend_password)
    client.on_publish = lambda *args: published.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True)
        assert published.wait(5), "PUBACK not received"
    finally:
        client.disconnect()
        client.loop_stop()


async def _aiomqtt_read_retained(broker: Mosquitto, topic: str) -> bytes:
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=broker.backend_username,
        password=broker.backend_password,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.retain
                return bytes(message.payload)  # type: ignore[arg-type]
    raise AssertionError("no retained message")


async def test_retained_qos1_survives_broker_restart(
    tmp_path_factory: pytest.TempPathFactory, servers_root: Path, unique: str
) -> None:
    broker = Mosquitto(
        servers_root / f"restart-{unique}", free_port(), backend_password=secrets.token_urlsafe(12)
    )
    broker.start()
    try:
        topic = f"devices/t{unique}/config"
        _paho_publish_retained(broker, topic, b'{"v":1,"version":7}')
        assert await _aiomqtt_read_retained(broker, topic) == b'{"v":1,"version":7}'
        assert broker.stop()
        broker.start()
        assert await _aiomqtt_read_retained(broker, topic) == b'{"v":1,"version":7}'
    finally:
        broker.stop()


def test_wrong_password_is_refused(broker: Mosquitto) -> None:
    assert (
        mqtt_connack("127.0.0.1", broker.port, broker.backend_username, broker.backend_password)
        == "Success"
    )
    refused = mqtt_connack("127.0.0.1", broker.port, broker.backend_username, "wrong")
    assert refused in {"Not authorized", "Bad user name or password"}


async def test_aiomqtt_wrong_password_raises(broker: Mosquitto) -> None:
    with pytest.raises(aiomqtt.MqttCodeError):
        async with aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            username="nobody",
            password="nothing",
            protocol=aiomqtt.ProtocolVersion.V5,
        ):
            pass


async def test_unique_index_rejects_duplicate(mongo_db) -> None:
    devices = mongo_db["devices"]
    await devices.create_index([("serial", ASCENDING)], unique=True)
    await devices.insert_one({"_id": "ap-1", "serial": "S1"})
    with pytest.raises(DuplicateKeyError):
        await devices.insert_one({"_id": "ap-2", "serial": "S1"})


async def test_find_one_and_update_upsert_creates_then_updates(mongo_db) -> None:
    devices = mongo_db["devices"]
    first = await devices.find_one_and_update(
        {"_id": "ap-1"},
        {"$set": {"fw": "1.0"}, "$inc": {"n": 1}},
        upsert=True,
        return_document=True,
    )
    second = await devices.find_one_and_update(
        {"_id": "ap-1"},
        {"$set": {"fw": "1.1"}, "$inc": {"n": 1}},
        upsert=True,
        return_document=True,
    )
    assert (first["fw"], first["n"]) == ("1.0", 1)
    assert (second["fw"], second["n"]) == ("1.1", 2)
    assert await devices.count_documents({}) == 1


async def test_store_applies_a_batch_with_per_write_outcomes(mongo_db) -> None:
    """Whichever server answers, the store's batch gives the same counts and refusals."""
    store = Store(mongo_db)
    devices = "devices"
    await mongo_db[devices].insert_many([{"_id": f"ap-{i}", "seq": 0} for i in range(500)])
    writes: list[Write] = [
        Update({"_id": f"ap-{i}"}, {"$set": {"seq": 1}}, upsert=True) for i in range(2_000)
    ]
    writes += [Insert({"_id": "ap-1"}), Insert({"_id": "new-1"})]
    result = await store.apply(devices, writes)
    assert (result.upserted, result.modified, result.inserted) == (1_500, 500, 1)
    assert result.duplicates == [2_000]
    assert result.errors == {}
    assert await mongo_db[devices].count_documents({"seq": 1}) == 2_000
    assert await store.server() in (Server.FERRETDB, Server.MONGODB)
    found = await store.find_ids(devices, ["ap-1", "ap-1999", "new-1", "absent"], {"seq": 1})
    assert sorted((d["_id"], d.get("seq")) for d in found) == [
        ("ap-1", 1),
        ("ap-1999", 1),
        ("new-1", None),
    ]


class _Finds(CommandListener):
    def __init__(self) -> None:
        self.finds = 0

    def started(self, event: CommandStartedEvent) -> None:
        self.finds += event.command_name == "find"

    def succeeded(self, event: object) -> None:
        pass

    def failed(self, event: object) -> None:
        pass


async def test_a_tenth_of_a_collection_is_read_by_id_in_one_query(mongo, mongo_db) -> None:
    """300 ids of 1,001 documents: one query on either server (an indexed ``$in`` on
    MongoDB, a read of the whole collection on FerretDB, not 300 ``find_one``), the same
    documents as one by one; a projection without ``_id`` still reads them one by one."""
    from pymongo import AsyncMongoClient

    await mongo_db["devices"].insert_many([{"_id": f"ap-{i}", "n": i} for i in range(1000)])
    await mongo_db["devices"].insert_one({"_id": {"compound": 1}, "n": -1})
    ids = [f"ap-{i}" for i in range(0, 1000, 4)] + [f"absent-{i}" for i in range(50)]
    listener = _Finds()
    client: AsyncMongoClient[dict] = AsyncMongoClient(mongo.url, event_listeners=[listener])
    try:
        store = Store(client[mongo_db.name])
        found = await store.find_ids("devices", ids, {"n": 1})
        assert listener.finds == 1
        few = await store.find_ids("devices", ids[:10], {"n": 1})
        bare = await store.find_ids("devices", ids, {"_id": 0, "n": 1})
    finally:
        await client.close()
    assert len(found) == 250
    assert {d["_id"]: d["n"] for d in found} == {f"ap-{i}": i for i in range(0, 1000, 4)}
    assert sorted(d["n"] for d in few) == list(range(0, 40, 4))
    assert sorted(d["n"] for d in bare) == list(range(0, 1000, 4))


async def test_a_write_no_server_can_store_is_isolated_from_its_batch(mongo_db) -> None:
    """An integer beyond 64 bits fails before it is sent (the whole bulk, on MongoDB):
    the store reports that one write as refused and applies the others."""
    store = Store(mongo_db)
    writes: list[Write] = [Insert({"_id": f"d{i}", "n": i}) for i in range(5)]
    writes.insert(2, Insert({"_id": "huge", "n": 2**70}))
    result = await store.apply("docs", writes)
    assert result.inserted == 5
    assert list(result.errors) == [2]
    assert "huge" not in {d["_id"] for d in await mongo_db["docs"].find().to_list()}


async def test_inserts_report_each_refused_document_by_its_index(mongo_db) -> None:
    """Inserts (sent together on FerretDB) report each duplicate and each refusal at the
    index it had in the batch; an insert and an update of one document run in order."""
    store = Store(mongo_db)
    await mongo_db["docs"].insert_one({"_id": "old", "n": 0})
    writes: list[Write] = [
        Insert({"_id": "a"}),
        Insert({"_id": "old"}),
        Insert({"_id": "huge", "n": 2**70}),
        Insert({"_id": "a"}),
        Insert({"_id": ["an array"]}),
        Update({"_id": "old"}, {"$set": {"n": 1}}),
        Insert({"n": 3}),
        *(Insert({"_id": f"d{i}"}) for i in range(1_500)),
    ]
    result = await store.apply("docs", writes)
    assert (result.inserted, result.modified) == (1_502, 1)
    assert sorted(result.duplicates) == [1, 3]
    assert sorted(result.errors) == [2, 4]
    assert await mongo_db["docs"].count_documents({}) == 1_503
    assert (await mongo_db["docs"].find_one({"_id": "old"}) or {})["n"] == 1


async def test_store_never_runs_two_writes_of_one_document_at_once(mongo_db) -> None:
    """FerretDB loses one of two concurrent updates of a document; the store's batches
    therefore send writes naming the same ``_id`` one after the other."""
    store = Store(mongo_db)
    await mongo_db["counters"].insert_many([{"_id": "a", "n": 0}, {"_id": "b", "n": 0}])
    writes: list[Write] = [Update({"_id": k}, {"$inc": {"n": 1}}) for k in "ab" * 100]
    result = await store.apply("counters", writes)
    assert result.modified == 200
    counted = {d["_id"]: d["n"] for d in await mongo_db["counters"].find().to_list()}
    assert counted == {"a": 100, "b": 100}


async def test_two_processes_writing_one_document_at_once_lose_nothing(mongo, mongo_db) -> None:
    """Two clients (as two bridge instances are) apply increments of the same documents at
    the same instant: FerretDB alone lost most of them (4 x 100 ``$inc`` kept 110), the
    store's write locks keep every one; and they leave no lock behind."""
    from pymongo import AsyncMongoClient

    from outpost.store import WRITE_LOCKS

    await mongo_db["counters"].insert_many([{"_id": k, "n": 0} for k in "abcd"])
    clients = [AsyncMongoClient(mongo.url) for _ in range(2)]
    try:
        stores = [Store(c[mongo_db.name]) for c in clients]
        writes: list[Write] = [Update({"_id": k}, {"$inc": {"n": 1}}) for k in "abcd" * 50]
        results = await asyncio.gather(*(s.apply("counters", writes) for s in stores))
    finally:
        for client in clients:
            await client.close()
    assert [r.modified for r in results] == [200, 200]
    counted = {d["_id"]: d["n"] for d in await mongo_db["counters"].find().to_list()}
    assert counted == {k: 100 for k in "abcd"}
    assert await mongo_db[WRITE_LOCKS].count_documents({}) == 0


async def _ferretdb_store(mongo_db) -> Store:
    store = Store(mongo_db)
    if await store.server() is Server.MONGODB:
        pytest.skip("MongoDB isolates the writes of one document: no write locks there")
    return store


class _LockRounds(CommandListener):
    """Counts lock rounds: one ``insert`` into the write-lock collection each."""

    def __init__(self) -> None:
        self.rounds = 0

    def started(self, event: CommandStartedEvent) -> None:
        self.rounds += event.command_name == "insert" and event.command["insert"] == WRITE_LOCKS

    def succeeded(self, event: object) -> None:
        pass

    def failed(self, event: object) -> None:
        pass


async def test_lock_rounds_are_sized_by_the_pace_of_the_last_one(
    mongo, mongo_db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FerretDB: until a round was measured, a round takes ``LOCK_ROUND`` documents; then
    as many as the last one wrote in ``LOCK_ROUND_S`` (here 1 ms, so the floor of 256),
    and every write still lands, with no lock left behind."""
    from pymongo import AsyncMongoClient

    import outpost.store as store_module

    await _ferretdb_store(mongo_db)
    await mongo_db["docs"].insert_many([{"_id": f"d{i}", "n": 0} for i in range(1000)])
    writes: list[Write] = [Update({"_id": f"d{i}"}, {"$inc": {"n": 1}}) for i in range(1000)]
    listener = _LockRounds()
    client: AsyncMongoClient[dict] = AsyncMongoClient(mongo.url, event_listeners=[listener])
    try:
        store = Store(client[mongo_db.name])
        assert (await store.apply("docs", writes)).modified == 1000
        assert listener.rounds == 1  # 1,000 < LOCK_ROUND: one round, which sets the pace
        monkeypatch.setattr(store_module, "LOCK_ROUND_S", 0.001)
        listener.rounds = 0
        assert (await store.apply("docs", writes)).modified == 1000
        assert listener.rounds == 4  # rounds of 256
    finally:
        await client.close()
    assert {d["n"] for d in await mongo_db["docs"].find().to_list()} == {2}
    assert await mongo_db[WRITE_LOCKS].count_documents({}) == 0


async def test_a_lock_left_by_a_dead_holder_is_taken_over_once_expired(mongo_db) -> None:
    from datetime import UTC, datetime, timedelta

    from outpost.store import WRITE_LOCKS, lock_id

    store = await _ferretdb_store(mongo_db)
    await mongo_db["docs"].insert_one({"_id": "x", "n": 0})
    expired = datetime.now(UTC) - timedelta(seconds=1)
    await mongo_db[WRITE_LOCKS].insert_one(
        {"_id": lock_id("docs", "x"), "holder": "dead", "expires_at": expired}
    )
    result = await asyncio.wait_for(
        store.apply("docs", [Update({"_id": "x"}, {"$inc": {"n": 1}})]), 10
    )
    assert result.modified == 1
    assert await mongo_db[WRITE_LOCKS].count_documents({}) == 0


async def test_a_document_another_process_holds_is_written_after_it_lets_go(mongo_db) -> None:
    from datetime import UTC, datetime, timedelta

    from outpost.store import WRITE_LOCKS, lock_id

    store = await _ferretdb_store(mongo_db)
    y = next(f"y{n}" for n in range(1000) if lock_id("docs", f"y{n}") != lock_id("docs", "x"))
    await mongo_db["docs"].insert_many([{"_id": "x", "n": 0}, {"_id": y, "n": 0}])
    held = datetime.now(UTC) + timedelta(seconds=30)
    await mongo_db[WRITE_LOCKS].insert_one(
        {"_id": lock_id("docs", "x"), "holder": "other", "expires_at": held}
    )
    writing = asyncio.create_task(
        store.apply("docs", [Update({"_id": k}, {"$inc": {"n": 1}}) for k in ("x", y)])
    )

    async def y_written() -> bool:
        return (await mongo_db["docs"].find_one({"_id": y}) or {}).get("n") == 1

    for _ in range(100):  # a document of a free bucket does not wait for the held one
        if await y_written():
            break
        await asyncio.sleep(0.05)
    assert await y_written()
    await asyncio.sleep(0.3)
    assert not writing.done()
    assert (await mongo_db["docs"].find_one({"_id": "x"}) or {})["n"] == 0
    await mongo_db[WRITE_LOCKS].delete_one({"_id": lock_id("docs", "x")})  # the holder lets go
    assert (await asyncio.wait_for(writing, 10)).modified == 2
    assert (await mongo_db["docs"].find_one({"_id": "x"}) or {})["n"] == 1


def _put(s3: S3Server, key: str, body: bytes) -> None:
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=body)


def _presign(s3: S3Server, key: str, seconds: int) -> str:
    url: str = s3.client().generate_presigned_url(
        "get_object", Params={"Bucket": s3.bucket, "Key": key}, ExpiresIn=seconds
    )
    return url


def test_presigned_get_returns_exact_bytes(s3: S3Server, unique: str) -> None:
    body = secrets.token_bytes(300_000)
    _put(s3, f"fw/{unique}.bin", body)
    response = requests.get(_presign(s3, f"fw/{unique}.bin", 300), timeout=10)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(body).digest()


def test_expired_presigned_url_is_refused(s3: S3Server, unique: str) -> None:
    _put(s3, f"fw/{unique}.bin", b"firmware")
    url = _presign(s3, f"fw/{unique}.bin", 1)
    time.sleep(2.2)  # waiting for the clock, not for a delivery
    response = requests.get(url, timeout=10)
    assert response.status_code == 403
    assert b"firmware" not in response.content


def test_tampered_signature_is_refused(s3: S3Server, unique: str) -> None:
    _put(s3, f"fw/{unique}.bin", b"firmware")
    parts = urlsplit(_presign(s3, f"fw/{unique}.bin", 300))
    query = dict(parse_qsl(parts.query))
    signature = query["X-Amz-Signature"]
    query["X-Amz-Signature"] = ("0" if signature[0] != "0" else "1") + signature[1:]
    response = requests.get(urlunsplit(parts._replace(query=urlencode(query))), timeout=10)
    assert response.status_code == 403


def test_wrong_secret_is_refused(s3: S3Server) -> None:
    forged = S3Server(s3.root, s3.port, secret_key="not-the-secret")
    response = requests.get(
        forged.client().generate_presigned_url(
            "list_objects_v2", Params={"Bucket": s3.bucket}, ExpiresIn=60
        ),
        timeout=10,
    )
    assert response.status_code == 403


def _remote_peers(pid: int) -> set[str]:
    """Remote addresses of every TCP/UDP socket process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    peers = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                peers.add(fields[2].split(":")[0])
    return peers


LOOPBACK_OR_NONE = {
    "00000000",
    "0100007F",  # 0.0.0.0, 127.0.0.1 (little-endian hex)
    "00000000000000000000000000000000",
    "00000000000000000000000001000000",  # ::, ::1
    "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
}


def test_servers_talk_to_loopback_only(broker: Mosquitto, mongo: MongoServer, s3: S3Server) -> None:
    embedded = [mongo.backend] if isinstance(mongo, MongoServer) else []
    for server in (broker, mongo, s3, *embedded):
        assert server.healthy()
        pid = server.running_pid()
        assert pid is not None
        peers = _remote_peers(pid)
        assert peers <= LOOPBACK_OR_NONE, f"{server.name} talks to {peers - LOOPBACK_OR_NONE}"


def test_secrets_are_neither_readable_by_others_nor_on_a_command_line(
    broker: Mosquitto, s3: S3Server
) -> None:
    for path in (broker.dynsec_path.parent, broker.dynsec_path):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    for server, secret in ((broker, broker.backend_password), (s3, s3.secret_key)):
        pid = server.running_pid()
        assert pid is not None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert secret not in argv, f"{server.name}'s secret is on its command line"


async def test_devices_reach_the_broker_over_tls_only_with_the_right_ca(
    broker: Mosquitto, tmp_path: Path
) -> None:
    account = Endpoint.from_url(broker.tls_url, ca_file=str(broker.ca_file)).as_user(
        broker.backend_username, broker.backend_password
    )
    async with aiomqtt_client(account, "tls-probe") as client:
        await client.publish("tls/probe", b"x", qos=1)
    stranger = local_ca(tmp_path / "other-ca")  # a CA the broker's certificate is not from
    wrong = Endpoint.from_url(broker.tls_url, ca_file=str(stranger.ca_file)).as_user(
        broker.backend_username, broker.backend_password
    )
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        async with aiomqtt_client(wrong, "tls-probe-wrong-ca"):
            pass
    plain_to_tls = Endpoint("127.0.0.1", broker.tls_port, False, None, "x", "y")
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt_client(plain_to_tls, "plain-on-tls", timeout=3):
            pass


NOT_AUTHORIZED = 135
# role -> [(publish|subscribe, topic, allowed)]: each service may do its job and no more
BACKEND_ACL = {
    "bridge": [
        ("subscribe", "$share/g/devices/+/presence", True),
        ("subscribe", "$share/g/devices/+/state", True),
        ("subscribe", "$share/g/devices/+/jobs/+/status", True),
        ("subscribe", "$share/g/devices/+/commands/+/result", True),
        ("subscribe", "$share/g/devices/+/commands/+", False),
        ("subscribe", "devices/+/presence", True),
        ("subscribe", "devices/#", False),
        ("subscribe", "$SYS/#", False),
        ("subscribe", "$CONTROL/dynamic-security/v1/response", False),
        ("publish", "devices/acl-x/config", False),
        ("publish", "devices/acl-x/state", False),
        ("publish", "devices/acl-x/jobs/j1", False),
        ("publish", "devices/acl-x/commands/c1", False),
        ("publish", "devices/acl-x/commands/c1/result", False),
    ],
    "scheduler": [
        ("publish", "devices/acl-x/jobs/j1", True),
        ("publish", "devices/acl-x/commands/c1", True),
        ("publish", "devices/acl-x/commands/c1/result", False),
        ("publish", "devices/acl-x/config", True),
        ("publish", "devices/acl-x/state", False),
        ("publish", "devices/acl-x/presence", False),
        ("publish", "$CONTROL/dynamic-security/v1", False),
        ("subscribe", "$SYS/#", True),
        ("subscribe", "devices/#", False),
        ("subscribe", "$share/g/devices/+/state", False),
    ],
    "api": [
        ("publish", "devices/acl-x/config", True),
        ("publish", "devices/acl-x/presence", True),
        ("publish", "devices/acl-x/commands/c1", True),
        ("publish", "devices/acl-x/commands/c1/result", False),
        ("publish", "devices/acl-x/jobs/j1", False),
        ("publish", "devices/acl-x/state", False),
        ("subscribe", "$CONTROL/dynamic-security/v1/response", True),
        ("subscribe", "devices/#", False),
        ("subscribe", "$SYS/#", False),
        # zero-touch provisioning: answer requests (shared), never pose as a device
        ("subscribe", "$share/g/provision/+/request", True),
        ("subscribe", "provision/#", False),
        ("publish", "provision/0123456789ab/reply/" + "t" * 24, True),
        ("publish", "provision/0123456789ab/request", False),
    ],
    "observer": [
        ("subscribe", "devices/#", True),
        ("subscribe", "$SYS/#", True),
        ("subscribe", "$CONTROL/dynamic-security/#", False),
        ("publish", "devices/acl-x/state", False),
        ("publish", "devices/acl-x/config", False),
        ("publish", "$CONTROL/dynamic-security/v1", False),
    ],
}


@pytest.mark.parametrize("role", sorted(BACKEND_ACL))
async def test_each_backend_role_may_do_its_job_and_no_more(broker: Mosquitto, role: str) -> None:
    from tests.integration.api.mqtt_clients import DeviceClient, in_thread

    username, password = broker.account(role)
    client_id = f"acl-{role}-{secrets.token_hex(3)}"
    client = DeviceClient("127.0.0.1", broker.port, username, password, client_id)
    seen = {}
    try:
        assert not (await in_thread(client.connect)).is_failure
        for action, topic, _ in BACKEND_ACL[role]:
            if action == "publish":
                code = (await in_thread(client.publish, topic, b"{}")).value
                seen[(action, topic)] = "ok" if code < 128 else code
            else:
                code = (await in_thread(client.subscribe, topic)).value
                seen[(action, topic)] = "ok" if code < 128 else code
    finally:
        client.close()
    assert seen == {(a, t): "ok" if ok else NOT_AUTHORIZED for a, t, ok in BACKEND_ACL[role]}
