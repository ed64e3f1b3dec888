"""Zero-touch provisioning against the real broker and database: claims, the exchange,
refusals, races, and the ACL a provisioned device gets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from api.app import create_app
from api.auth import Role
from api.provisioning import Provisioner
from device.agent import from_claim
from device.errors import ProvisioningError, Refused
from device.provisioning import new_request, provision, read_reply
from device.sim import Broker, Fleet, FleetOptions, provision_fleet, serials
from device.storage import load_state
from outpost.mqtt import Endpoint, aiomqtt_client
from outpost.sealing import IdentityKey
from schemas.provisioning import Identity, ProvisionReply, claim_id_of, claim_username
from tests.integration.api.conftest import Api, api_settings, eventually
from tests.integration.api.mqtt_clients import DeviceClient, in_thread
from tests.integration.api.test_devices import (
    NOT_AUTHORIZED,
    PUBLISH_ACL,
    SUBSCRIBE_ACL,
    presence,
)
from tests.integration.device.agents import agent_config, start_thread_agent
from tests.integration.device.conftest import backend_client

pytestmark = pytest.mark.integration

TEMPLATE = {"country": "DE", "radios": {"2.4GHz": {"channel": 6}}}


@pytest.fixture
async def papi(broker, mongo, s3, unique) -> AsyncIterator[Api]:
    """The api with a provisioning share group of its own (no other test's api answers)."""
    database = f"api_{secrets.token_hex(5)}"
    settings = api_settings(
        broker,
        mongo,
        s3,
        database,
        provision_share_group=f"p-{unique}",
        provision_serial_burst=6,
        provision_serial_interval_s=3600,  # no refill within a test: the burst is exact
        device_broker_url=broker.tls_url,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        handle = Api(app, state["app"])
        await eventually(lambda: handle.state.link.connected)
        try:
            yield handle
        finally:
            await handle.state.db.db.client.drop_database(database)


def endpoint(broker) -> Endpoint:
    return Endpoint("127.0.0.1", broker.tls_port, tls=True, ca_file=str(broker.ca_file))


async def make_claim(http, **body) -> dict:
    response = await http.post("/claims", json={"name": "batch", **body})
    assert response.status_code == 201, response.text
    return response.json()


def counted(api: Api, result: str) -> float:
    value = api.state.metrics.registry.get_sample_value(
        "outpost_api_provisioning_total", {"result": result}
    )
    return value or 0.0


async def test_a_device_provisions_and_gets_its_group_config(papi: Api, broker, unique):
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    async with papi.client(token) as http:
        made = await http.post("/groups", json={"name": "lobby", "template": TEMPLATE})
        assert made.status_code == 201, made.text
        claim = await make_claim(http, group="lobby", tags=["site:b"], allow=[f"SN-{unique}"])
        identity = await provision(
            endpoint(broker), claim["secret"], f"SN-{unique}", "ap-1", IdentityKey()
        )
        assert identity.broker_url == broker.tls_url
        assert identity.tenant_id == f"t-{unique}"
        device = (await http.get(f"/devices/{identity.device_id}")).json()
        assert (device["group"], device["tags"]) == ("lobby", ["site:b"])
        config = (await http.get(f"/devices/{identity.device_id}/config")).json()
    me = DeviceClient("127.0.0.1", broker.port, identity.username, identity.password)
    got: list[bytes] = []
    me.client.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    try:
        assert not (await in_thread(me.connect)).is_failure
        assert (await in_thread(me.subscribe, f"devices/{identity.device_id}/config")).value == 1
        await eventually(lambda: got, within=10)
    finally:
        me.close()
    assert json.loads(got[0])["hash"] == config["hash"]
    assert counted(papi, "new") == 1


# -- claims through the api ----------------------------------------------------------------


async def test_claims_are_created_listed_revoked_and_audited(papi: Api, broker, unique):
    admin = await papi.token(f"t-{unique}", Role.ADMIN)
    operator = await papi.token(f"t-{unique}", Role.OPERATOR)
    async with papi.client(operator) as http:
        assert (await http.post("/claims", json={"name": "x"})).status_code == 403
    async with papi.client(admin) as http:
        bad_group = await http.post("/claims", json={"name": "x", "group": "nope"})
        assert bad_group.status_code == 422, bad_group.text
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        expired = await http.post("/claims", json={"name": "x", "expires_at": past})
        assert expired.status_code == 422
        bad_serial = await http.post("/claims", json={"name": "x", "allow": ["bad serial!"]})
        assert bad_serial.status_code == 422
        assert bad_serial.headers["content-type"] == "application/problem+json"
        claim = await make_claim(http, allow=["AA-BB-CC-00-00-01"], device_limit=5)
        assert claim["secret"].startswith(f"opc_{claim['id']}_")
        assert claim["allow"] == ["aa:bb:cc:00:00:01"]  # MACs compare in one spelling
        assert claim["username"] == claim_username(claim["id"])
        stored = await papi.state.db["provisioning_claims"].find_one({"_id": claim["id"]})
        assert claim["secret"] not in json.dumps(stored, default=str)
        listed = (await http.get("/claims")).json()["items"]
        assert [c["id"] for c in listed] == [claim["id"]]
        assert "secret" not in listed[0]
        account = DeviceClient(
            "127.0.0.1", broker.port, claim["username"], claim["secret"], f"c-{unique}"
        )
        try:
            assert not (await in_thread(account.connect)).is_failure
            assert (await http.delete(f"/claims/{claim['id']}")).status_code == 204
            await in_thread(account.disconnected.wait, 5)
            assert account.disconnected.is_set(), "revoking must disconnect the claim account"
        finally:
            account.close()
        again = DeviceClient("127.0.0.1", broker.port, claim["username"], claim["secret"])
        try:
            assert (await in_thread(again.connect)).is_failure
        finally:
            again.close()
        assert (await http.get(f"/claims/{claim['id']}")).json()["revoked_at"]
        assert (await http.get("/claims/000000000000")).status_code == 404
        audit = (await http.get("/audit", params={"target": f"claim:{claim['id']}"})).json()
        assert [e["action"] for e in audit["items"]] == ["claim.revoke", "claim.create"]
        assert claim["secret"] not in json.dumps(audit)


# (topic, allowed), {c}: the claim, {other}: another claim, {dev}: a registered device
CLAIM_PUBLISH = [
    ("provision/{c}/request", True),
    ("provision/{other}/request", False),
    ("provision/{c}/reply/" + "t" * 24, False),
    ("provision/{c}/other", False),
    ("devices/{dev}/presence", False),
    ("devices/{dev}/state", False),
    ("$CONTROL/dynamic-security/v1", False),
]
CLAIM_SUBSCRIBE = [
    ("provision/{c}/reply/" + "t" * 24, True),
    ("provision/{c}/reply/+", True),  # the wildcard too: replies are sealed for this
    ("provision/{c}/request", False),
    ("provision/+/request", False),
    ("provision/{other}/reply/+", False),
    ("provision/#", False),
    ("devices/{dev}/config", False),
    ("devices/#", False),
    ("$SYS/#", False),
    ("#", False),
]


async def test_a_claim_account_may_only_use_its_provisioning_channel(papi: Api, broker, unique):
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    async with papi.client(token) as http:
        claim, other = await make_claim(http), await make_claim(http)
        dev = await http.post("/devices", json={"id": f"d-{unique}", "hardware_model": "m"})
        assert dev.status_code == 201
    names = {"c": claim["id"], "other": other["id"], "dev": f"d-{unique}"}
    account = DeviceClient(
        "127.0.0.1", broker.port, claim["username"], claim["secret"], f"c-{unique}"
    )
    try:
        assert not (await in_thread(account.connect)).is_failure
        published = {
            t: (await in_thread(account.publish, t.format(**names), b"{}")).value
            for t, _ in CLAIM_PUBLISH
        }
        subscribed = {
            t: (await in_thread(account.subscribe, t.format(**names))).value
            for t, _ in CLAIM_SUBSCRIBE
        }
    finally:
        account.close()
    assert {t: c < 128 for t, c in published.items()} == dict(CLAIM_PUBLISH)
    assert {t: c == 1 for t, c in subscribed.items()} == dict(CLAIM_SUBSCRIBE)


async def test_a_claim_holder_taking_a_devices_session_receives_nothing(papi: Api, broker, unique):
    """Mosquitto 2.0.11 hands a persistent session to a client of *another* account that
    connects with its client id (measured): the claim role's receive deny keeps the
    device's queued messages from the claim holder."""
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    device_id = f"d-{unique}"
    async with papi.client(token) as http:
        claim = await make_claim(http)
        made = await http.post("/devices", json={"id": device_id, "hardware_model": "m"})
        password = made.json()["credentials"]["password"]
    where = Endpoint("127.0.0.1", broker.port, username=device_id, password=password)
    session = {"clean_start": False, "properties": _session_expiry()}
    async with aiomqtt_client(where, device_id, **session) as device:
        await device.subscribe(f"devices/{device_id}/config", qos=1)
    async with backend_client(broker) as backend:
        await backend.publish(f"devices/{device_id}/config", b'{"queued": true}', qos=1)
    thief = Endpoint("127.0.0.1", broker.port, username=claim["username"], password=claim["secret"])
    probe = f"provision/{claim['id']}/reply/" + "p" * 24
    async with aiomqtt_client(thief, device_id, **session) as taken:
        await taken.subscribe(probe, qos=1)
        await papi.state.link.publish(probe, b"probe")  # the api may publish replies
        async with asyncio.timeout(5):
            first = await anext(aiter(taken.messages))
    assert first.topic.value == probe, f"the claim holder got {first.topic.value}"


def _session_expiry():
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    return props


# -- refusals --------------------------------------------------------------------------------


async def ask(broker, claim: dict, serial: str, key: IdentityKey | None = None):
    """One attempt, no retries: the identity, or the Refused/ProvisioningError raised."""
    try:
        return await provision(
            endpoint(broker), claim["secret"], serial, "ap-1", key or IdentityKey(), attempts=1
        )
    except ProvisioningError as exc:
        return exc


def reason(outcome) -> str:
    return outcome.reason if isinstance(outcome, Refused) else "ok"


async def test_refusals_are_clear_and_counted(papi: Api, broker, unique):
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    async with papi.client(token) as http:
        listed = await make_claim(http, allow=["SN-1", "AA-BB-CC-00-00-01"])
        limited = await make_claim(http, device_limit=2)
        soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
        expiring = await make_claim(http, expires_at=soon)
        revoked = await make_claim(http)
        assert (await http.delete(f"/claims/{revoked['id']}")).status_code == 204

    # allow-list: any spelling of a listed MAC is the same serial
    assert reason(await ask(broker, listed, "SN-2")) == "not_allowed"
    mac_key = IdentityKey()
    mac = await ask(broker, listed, "aa:bb:cc:00:00:01", mac_key)
    # a decommissioned device stays so: its serial gets no new credentials
    async with papi.client(token) as http:
        assert (await http.delete(f"/devices/{mac.device_id}")).status_code == 204
    assert reason(await ask(broker, listed, "AABBCC000001", mac_key)) == "decommissioned"
    # limit: three new serials at once, two slots; a repeat needs no new slot
    keys = [IdentityKey() for _ in range(3)]
    outcomes = await asyncio.gather(*(ask(broker, limited, f"L-{n}", keys[n]) for n in range(3)))
    assert sorted(reason(o) for o in outcomes) == ["ok", "ok", "over_limit"]
    first = next(n for n, o in enumerate(outcomes) if reason(o) == "ok")
    assert reason(await ask(broker, limited, f"L-{first}", keys[first])) == "ok"
    # a serial's rate: a burst of 6 (papi), then refused
    key = IdentityKey()
    burst = [reason(await ask(broker, listed, "SN-1", key)) for _ in range(7)]
    assert burst == ["ok"] * 6 + ["rate_limited"]
    # expired: once its time has passed (a wall-clock deadline, not a delivery wait)
    await asyncio.sleep((datetime.fromisoformat(soon) - datetime.now(UTC)).total_seconds())
    assert reason(await ask(broker, expiring, "SN-1")) == "expired"
    # revoked: the broker refuses the claim account; a request that reached the api
    # anyway (sent before the revocation) is refused there
    assert isinstance(await ask(broker, revoked, "SN-1"), ProvisioningError)
    direct = Provisioner(papi.state)
    exchange = new_request(revoked["id"], "SN-1", "ap-1", IdentityKey())
    assert (await direct.answer(revoked["id"], exchange.payload)).reason == "revoked"
    unknown = new_request("0123456789ab", "SN-1", "ap-1", IdentityKey())
    assert (await direct.answer("0123456789ab", unknown.payload)).reason == "unknown_claim"
    assert (await direct.answer(listed["id"], b"{not json")).reason == "invalid"

    counts = {
        r: counted(papi, r)
        for r in (
            "not_allowed",
            "over_limit",
            "rate_limited",
            "expired",
            "revoked",
            "unknown_claim",
            "invalid",
            "decommissioned",
        )
    }
    assert counts == {r: 1 for r in counts}
    assert (counted(papi, "new"), counted(papi, "repeat")) == (4, 6)


# -- one device cannot learn another's credentials ---------------------------------------------


def connects(broker, identity) -> bool:
    client = DeviceClient("127.0.0.1", broker.port, identity.username, identity.password)
    try:
        return not client.connect().is_failure
    finally:
        client.close()


async def test_two_devices_racing_for_one_serial_and_a_replayed_serial(papi: Api, broker, unique):
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    async with papi.client(token) as http:
        claim = await make_claim(http)
    # two devices race on the same claim with the same serial: one wins, one is refused
    a, b = IdentityKey(), IdentityKey()
    outcomes = await asyncio.gather(ask(broker, claim, "SN-X", a), ask(broker, claim, "SN-X", b))
    assert sorted(reason(o) for o in outcomes) == ["identity_mismatch", "ok"]
    winner_key, winner = (a, outcomes[0]) if reason(outcomes[0]) == "ok" else (b, outcomes[1])
    loser_key = b if winner_key is a else a
    # the loser replays the winner's serial later: refused, and the winner is untouched
    assert reason(await ask(broker, claim, "SN-X", loser_key)) == "identity_mismatch"
    assert await in_thread(connects, broker, winner)
    # the winner asking again: the same device, a new password; the old one stops working
    again = await ask(broker, claim, "SN-X", winner_key)
    assert again.device_id == winner.device_id
    assert again.password != winner.password
    assert not await in_thread(connects, broker, winner)
    assert await in_thread(connects, broker, again)
    # an exact replay of a request that was answered is refused
    exchange = new_request(claim["id"], "SN-Y", "ap-1", IdentityKey())
    direct = Provisioner(papi.state)
    assert (await direct.answer(claim["id"], exchange.payload)).status == "ok"
    assert (await direct.answer(claim["id"], exchange.payload)).reason == "replayed"
    # after an admin reset, the serial binds the next key and gets the same device
    async with papi.client(token) as http:
        reset = await http.post(f"/devices/{winner.device_id}/provisioning/reset")
        assert reset.status_code == 200, reset.text
        assert reset.json()["serial"] == "SN-X"
    rebound = await ask(broker, claim, "SN-X", loser_key)
    assert rebound.device_id == winner.device_id
    assert reason(await ask(broker, claim, "SN-X", winner_key)) == "identity_mismatch"
    assert not await in_thread(connects, broker, again)
    assert counted(papi, "rebind") == 1


async def test_another_claim_holder_reading_the_reply_learns_nothing(papi: Api, broker, unique):
    """The claim account may subscribe to every reply of its claim (no %c in Mosquitto
    2.0.11's ACLs): what it reads there is sealed to the requester's key."""
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    async with papi.client(token) as http:
        claim = await make_claim(http)
    account = Endpoint(
        "127.0.0.1", broker.port, username=claim["username"], password=claim["secret"]
    )
    async with aiomqtt_client(account, f"eve-{unique}") as eve:
        await eve.subscribe(f"provision/{claim['id']}/reply/+", qos=1)
        victim = await ask(broker, claim, "SN-V")
        async with asyncio.timeout(5):
            seen = await anext(aiter(eve.messages))
    payload = bytes(seen.payload)
    assert victim.password not in payload.decode()
    assert ProvisionReply.model_validate_json(payload).status == "ok"
    mine = new_request(claim["id"], "SN-V", "ap-1", IdentityKey())  # eve's own reply key
    with pytest.raises(ProvisioningError, match="unreadable"):
        read_reply(payload, mine)


# -- a provisioned device is an admin-registered device ------------------------------------------


async def test_provisioned_device_has_the_acl_of_a_registered_one(papi: Api, broker, unique):
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    async with papi.client(token) as http:
        claim = await make_claim(http)
        registered = await http.post("/devices", json={"id": f"r-{unique}", "hardware_model": "m"})
        assert registered.status_code == 201
    provisioned = await ask(broker, claim, "SN-ACL")
    control = papi.state.link.control

    async def account(device_id: str) -> dict:
        role, client, listener = await control(
            [
                {"command": "getRole", "rolename": f"device-{device_id}"},
                {"command": "getClient", "username": device_id},
                {"command": "getClient", "username": f"{device_id}/listen"},
            ]
        )
        found = {
            "acls": sorted(role["data"]["role"]["acls"], key=json.dumps),
            "client": {k: client["data"]["client"].get(k) for k in ("clientid", "roles")},
            "listener": {k: listener["data"]["client"].get(k) for k in ("clientid", "roles")},
        }
        return json.loads(json.dumps(found).replace(device_id, "{id}"))

    assert await account(provisioned.device_id) == await account(f"r-{unique}")
    # and it behaves the same: the device ACL table of test_devices, for this device
    names = {"me": provisioned.device_id, "other": f"r-{unique}"}
    device = DeviceClient("127.0.0.1", broker.port, provisioned.username, provisioned.password)
    try:
        assert not (await in_thread(device.connect)).is_failure
        published = {
            p: (await in_thread(device.publish, p.format(**names), presence(names["me"]))).value
            for p, _ in PUBLISH_ACL
        }
        subscribed = {
            p: (await in_thread(device.subscribe, p.format(**names))).value
            for p, _ in SUBSCRIBE_ACL
        }
    finally:
        device.close()
    outcome = {p: "accepted" if code < 128 else code for p, code in published.items()}
    assert outcome == {p: "accepted" if ok else NOT_AUTHORIZED for p, ok in PUBLISH_ACL}
    assert subscribed == {p: 1 if ok else NOT_AUTHORIZED for p, ok in SUBSCRIBE_ACL}


# -- a batch out of the box ---------------------------------------------------------------------

FLEET = 50


async def test_a_batch_starts_from_a_claim_and_gets_its_group_config(papi: Api, broker, unique):
    """Simulated devices with only the claim and their serials: each provisions its own
    account, comes online with it and applies its group's config (bench/provision_claim.py
    runs the same with 100 devices and records the time)."""
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    async with papi.client(token) as http:
        made = await http.post("/groups", json={"name": "lobby", "template": TEMPLATE})
        assert made.status_code == 201, made.text
        batch = serials(f"B{unique}", FLEET)
        claim = await make_claim(http, group="lobby", allow=batch, device_limit=FLEET)
    where = Broker("127.0.0.1", broker.tls_port, tls=True, ca_file=str(broker.ca_file))
    log = logging.getLogger("test.provision")
    started = time.monotonic()
    done = await provision_fleet(where, claim["secret"], batch, logger=log)
    ids = done.ids
    assert len(set(ids)) == FLEET
    options = FleetOptions(ids=ids, connect_concurrency=32)
    async with Fleet(options, done.fleet_broker(where), log) as fleet:
        async with asyncio.timeout(60):
            await fleet.wait_ready()
            await fleet.wait_configured()
        elapsed = time.monotonic() - started
        hashes = {fleet.device(i).config.hash for i in ids}
        statuses = {fleet.device(i).config.status for i in ids}
    async with papi.client(token) as http:
        config = (await http.get(f"/devices/{ids[0]}/config")).json()
        members = (await http.get("/devices", params={"group": "lobby", "limit": 100})).json()
    assert hashes == {config["hash"]}
    assert statuses == {"applied"}
    assert {d["id"] for d in members["items"]} == set(ids)
    log.warning(
        "batch from a claim",
        extra={"devices": FLEET, "provisioned_s": done.seconds, "configured_s": elapsed},
    )


async def test_the_reference_agent_starts_from_a_claim(papi: Api, broker, unique, tmp_path: Path):
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    async with papi.client(token) as http:
        made = await http.post("/groups", json={"name": "lobby", "template": TEMPLATE})
        assert made.status_code == 201, made.text
        claim = await make_claim(http, group="lobby")
    state_file = tmp_path / "agent.json"
    blank = agent_config(broker, "unprovisioned", "", state_file, hardware_model="ref-ap")
    config = await in_thread(from_claim, blank, claim["secret"], f"SN-{unique}")
    assert state_file.stat().st_mode & 0o077 == 0, "the state file holds a password"
    applied: list = []
    agent = start_thread_agent(config, apply_config=applied.append)
    try:
        await eventually(lambda: applied, within=15)
    finally:
        await in_thread(agent.close)
    assert config.firmware_key == papi.state.settings.signer().public_text
    # a reboot: the identity comes from the state file, no second request
    again = await in_thread(from_claim, blank, claim["secret"], f"SN-{unique}")
    assert (again.device_id, again.password) == (config.device_id, config.password)
    assert load_state(state_file, firmware="x").identity.device_id == config.device_id
    assert (counted(papi, "new"), counted(papi, "repeat")) == (1, 0)
    assert claim_id_of(claim["secret"]) == claim["id"]


SHELL_DIR = Path(__file__).resolve().parents[3] / "device" / "shell"


def run_provision_script(claim: dict, serial: str, broker, state_dir: Path):
    env = {
        **os.environ,
        "OUTPOST_CLAIM": claim["secret"],
        "OUTPOST_SERIAL": serial,
        "OUTPOST_BROKER_HOST": "127.0.0.1",
        "OUTPOST_BROKER_PORT": str(broker.tls_port),
        "OUTPOST_CA_FILE": str(broker.ca_file),
        "OUTPOST_STATE_DIR": str(state_dir),
    }
    script = str(SHELL_DIR / "outpost-provision.sh")
    return subprocess.run(["sh", script], env=env, capture_output=True, timeout=60, check=False)


def start_shell_device(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            ["sh", str(SHELL_DIR / "outpost-device.sh")],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


async def test_the_shell_device_provisions_with_openssl_and_mosquitto_rr(
    papi: Api, broker, unique, tmp_path: Path
):
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    async with papi.client(token) as http:
        claim = await make_claim(http, allow=[f"SH-{unique}"])
    state = tmp_path / "state"
    done = await in_thread(run_provision_script, claim, f"SH-{unique}", broker, state)
    assert done.returncode == 0, done.stderr.decode()
    identity = Identity.model_validate_json((state / "identity.json").read_text())
    assert (state / "identity.json").stat().st_mode & 0o077 == 0
    # the device script takes its account from identity.json and comes online with it
    env = {
        **os.environ,
        "OUTPOST_BROKER_HOST": "127.0.0.1",
        "OUTPOST_BROKER_PORT": str(broker.tls_port),
        "OUTPOST_CA_FILE": str(broker.ca_file),
        "OUTPOST_STATE_DIR": str(state),
    }
    env.pop("OUTPOST_DEVICE_ID", None)
    async with backend_client(broker) as watcher:
        await watcher.subscribe(f"devices/{identity.device_id}/presence", qos=1)
        proc = start_shell_device(env, tmp_path / "device.log")
        try:
            async with asyncio.timeout(20):
                message = await anext(aiter(watcher.messages))
            assert json.loads(message.payload)["status"] == "online"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            await in_thread(proc.wait, 10)
    # run again: it keeps what it has and asks nothing
    again = await in_thread(run_provision_script, claim, f"SH-{unique}", broker, state)
    assert again.returncode == 0
    assert counted(papi, "new") == 1
    assert counted(papi, "repeat") == 0
    # a serial not on the list: refused, with the reason, exit status 2
    other = await in_thread(run_provision_script, claim, f"XX-{unique}", broker, tmp_path / "o")
    assert other.returncode == 2
    assert b"not_allowed" in other.stderr


def run_sim(broker, claim: dict, prefix: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "OUTPOST_SIM_BROKER_URL": broker.tls_url,
        "OUTPOST_SIM_CA_FILE": str(broker.ca_file),
        "OUTPOST_SIM_CLAIM": claim["secret"],
    }
    argv = [sys.executable, "-m", "cli", "sim", "--devices", "3", "--serial-prefix", prefix]
    return subprocess.run(
        [*argv, "--duration", "0.5"], env=env, cwd=cwd, capture_output=True, timeout=120
    )


async def test_outpost_sim_starts_a_fleet_from_a_claim(papi: Api, broker, unique, tmp_path):
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    async with papi.client(token) as http:
        made = await http.post("/groups", json={"name": "lobby", "template": TEMPLATE})
        assert made.status_code == 201, made.text
        claim = await make_claim(http, group="lobby", device_limit=3)
        done = await in_thread(run_sim, broker, claim, f"S{unique}", tmp_path)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert b"provisioned 3 devices" in done.stderr
        members = (await http.get("/devices", params={"group": "lobby"})).json()["items"]
    assert len(members) == 3
    assert counted(papi, "new") == 3
