"""Issue 12: every request from the report answers as the contract says (real servers).

One test per finding: overflowing integers, self-revocation, the typed WiFi schemas,
spec/behaviour agreement (If-Match, waves.kind, config version 0, weak ETags, Allow,
errors[]), empty images, unknown countries, secrets, and the two races.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime, timedelta

import pytest

from api.auth import Role, new_token
from api.store import tenants
from schemas.documents import AUDIT_LOG
from tests.integration.api.conftest import Api
from tests.integration.api.test_config import ConfigWatcher

pytestmark = pytest.mark.integration
PROBLEM = "application/problem+json"
PSK = "correct horse battery"
RADIUS_SECRET = "radius-shared-secret"
CONFIG = {
    "country": "DE",
    "radios": {"2.4GHz": {"channel": 6}, "5GHz": {"channel": 36, "width": 80}},
    "ssids": [
        {
            "name": "Office",
            "security": {"mode": "wpa2-psk", "passphrase": PSK},
            "bands": ["2.4GHz"],
        },
        {
            "name": "Staff",
            "security": {
                "mode": "wpa2-enterprise",
                "radius": [{"host": "10.0.0.5", "secret": RADIUS_SECRET}],
            },
            "bands": ["5GHz"],
        },
    ],
}


async def device(http, device_id: str, **body) -> dict:
    r = await http.post("/devices", json={"id": device_id, "hardware_model": "ap-1", **body})
    assert r.status_code == 201, r.text
    return r.json()


def field_errors(response) -> list[tuple[str, ...]]:
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["errors"], body
    return [tuple(str(p) for p in e["loc"]) for e in body["errors"]]


async def test_integers_beyond_64_bits_are_422_with_errors_not_500(api: Api, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        await device(http, f"big-{unique}", overrides=CONFIG)
        for version in (2**64, 2**63, 2**31):
            r = await http.post(f"/devices/big-{unique}/config/rollback", json={"version": version})
            assert r.status_code == 422, r.text
            assert ("body", "version") in field_errors(r)
        r = await http.get("/devices", params={"cursor": "WzE4NDQ2NzQ0MDczNzA5NTUxNjE2LCJ4Il0"})
        assert r.status_code == 422  # a cursor holding 2**64 is not one this api made
        r = await http.get("/devices", params={"last_seen_before": "2026-01-01T00:00:00"})
        assert r.status_code == 422  # a time without offset cannot be compared


async def test_a_token_cannot_revoke_itself_nor_the_last_admin(api: Api, unique):
    tenant = f"t-{unique}"
    first = await api.token(tenant, Role.ADMIN)
    async with api.client(first) as http:
        me = next(t for t in (await http.get("/tokens")).json()["items"])
        r = await http.delete(f"/tokens/{me['token_id']}")
        assert r.status_code == 409
        assert "itself" in r.json()["detail"]
        assert (await http.get("/tenant")).status_code == 200

        # Two admins revoking each other at once: the tenant keeps one of them.
        for _ in range(3):
            other = (await http.post("/tokens", json={"name": "b", "role": "admin"})).json()
            async with api.client(other["token"]) as http_b:
                mine = [
                    t
                    for t in (await http.get("/tokens")).json()["items"]
                    if t["token_id"] != other["token_id"] and t["revoked_at"] is None
                ]
                a_id = mine[0]["token_id"]
                results = await asyncio.gather(
                    http.delete(f"/tokens/{other['token_id']}"),
                    http_b.delete(f"/tokens/{a_id}"),
                )
            codes = sorted(r.status_code for r in results)
            assert codes in ([204, 401], [204, 409]), [r.text for r in results]
            assert len(await tenants.active_admins(api.state.db, tenant)) == 1
            survivor = first if results[0].status_code == 204 else other["token"]
            if survivor != first:
                break
    async with api.client(survivor) as http:
        assert (await http.get("/tenant")).status_code == 200


async def test_tokens_expire_record_last_use_and_failures_are_counted(
    api: Api, unique, caplog: pytest.LogCaptureFixture
):
    tenant = f"t-{unique}"
    admin = await api.token(tenant, Role.ADMIN)
    expired = new_token()
    await tenants.create_token(
        api.state.db,
        expired,
        tenant,
        Role.VIEWER,
        "old",
        None,
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    failures = api.state.metrics.auth_failures
    before = failures.labels("expired")._value.get()
    caplog.set_level(logging.WARNING, logger="outpost.api")
    async with api.client(expired.secret) as http:
        r = await http.get("/tenant")
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]
    assert failures.labels("expired")._value.get() == before + 1
    refused = [rec for rec in caplog.records if rec.getMessage() == "authentication failed"]
    assert refused
    assert refused[-1].token_id == expired.token_id
    assert all(expired.secret not in rec.getMessage() + str(rec.__dict__) for rec in caplog.records)

    async with api.client(admin) as http:
        past = await http.post(
            "/tokens", json={"name": "p", "role": "viewer", "expires_at": "2020-01-01T00:00:00Z"}
        )
        assert past.status_code == 422
        soon = datetime.now(UTC) + timedelta(days=1)
        made = await http.post(
            "/tokens", json={"name": "v", "role": "viewer", "expires_at": soon.isoformat()}
        )
        assert made.status_code == 201
        async with api.client(made.json()["token"]) as viewer:
            assert (await viewer.get("/tenant")).status_code == 200
        listed = {t["token_id"]: t for t in (await http.get("/tokens")).json()["items"]}
    used = listed[made.json()["token_id"]]
    assert used["expires_at"] is not None
    assert used["last_used_at"] is not None


async def test_openapi_has_the_wifi_model_and_requires_what_the_api_requires(api: Api):
    async with api.client() as http:
        spec = (await http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for name in ("WifiConfigPatch", "WifiConfigPublic", "WifiConfigPatchPublic", "Ssid", "Radio"):
        assert name in schemas
    overrides = schemas["OverridesUpdate"]["properties"]["overrides"]
    assert overrides == {"$ref": "#/components/schemas/WifiConfigPatch"}
    put = spec["paths"]["/devices/{device_id}/config/overrides"]["put"]
    if_match = next(p for p in put["parameters"] if p["name"].lower() == "if-match")
    assert if_match["required"] is True
    template = spec["paths"]["/groups/{name}/template"]["put"]
    assert any(p["name"].lower() == "if-match" and p["required"] for p in template["parameters"])
    for kind in ("FixedWaves", "PercentWaves", "ExponentialRate"):
        assert "kind" in schemas[kind]["required"]
        assert "default" not in schemas[kind]["properties"]["kind"]
    assert "errors" in schemas["ValidationProblem"]["required"]


async def test_spec_and_behaviour_agree(api: Api, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    device_id = f"agree-{unique}"
    async with api.client(token) as http:
        await device(http, device_id)
        # a device without config: version 0, and that is the ETag to send
        r = await http.get(f"/devices/{device_id}/config")
        assert r.status_code == 200
        assert r.headers["etag"] == '"0"'
        assert r.json()["version"] == 0
        assert r.json()["config"] is None
        url = f"/devices/{device_id}/config/overrides"
        missing = await http.put(url, json={"overrides": CONFIG})
        assert missing.status_code == 428
        missing = await http.put(url, json={"overrides": {"country": "AA"}})
        assert missing.status_code == 428  # whatever else is wrong
        weak = await http.put(url, headers={"If-Match": 'W/"0"'}, json={"overrides": CONFIG})
        assert weak.status_code == 412
        ok = await http.put(
            url, headers={"If-Match": r.headers["etag"]}, json={"overrides": CONFIG}
        )
        assert ok.status_code == 200, ok.text
        assert ok.headers["etag"] == '"1"'

        # waves.kind has no default in the spec, so none in behaviour: a 422 naming it
        r = await http.post(
            "/rollouts/dry-run",
            json={
                "firmware": {"id": "x", "version": "1"},
                "target": {"tags": ["a"]},
                "waves": {"size": 1},
            },
        )
        assert r.status_code == 422
        assert any("waves" in loc for loc in field_errors(r))

        # a 405 names every method of the path
        r = await http.put(f"/devices/{device_id}")
        assert r.status_code == 405
        assert set(r.headers["allow"].split(", ")) == {"DELETE", "GET", "PATCH"}
        r = await http.get("/rollouts/dry-run")  # not a rollout id: a POST-only path
        assert r.status_code == 405
        assert r.headers["allow"] == "POST"

        # an invalid effective config: errors[] names each field
        bad = {**CONFIG, "radios": {"5GHz": {"channel": 165, "width": 80}}}
        r = await http.put(url, headers={"If-Match": '"1"'}, json={"overrides": bad})
        assert r.status_code == 422
        assert ("body", "overrides", "radios", "5GHz", "width") in field_errors(r)
        r = await http.put(url, headers={"If-Match": '"1"'}, json={"overrides": {"radios": 7}})
        assert r.status_code == 422
        assert ("body", "overrides", "radios") in field_errors(r)


@pytest.mark.parametrize("country", ["ZZ", "XX", "QQ", "AA"])
async def test_country_codes_outside_iso_3166_are_refused(api: Api, unique, country: str):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        r = await http.post(
            "/devices",
            json={
                "id": f"cc-{unique}",
                "hardware_model": "ap-1",
                "overrides": {"country": country, "radios": {"2.4GHz": {}}},
            },
        )
    assert r.status_code == 422
    assert ("body", "overrides", "country") in field_errors(r)


async def test_empty_image_is_refused_and_the_image_can_then_be_uploaded(api: Api, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        fw = (
            await http.post("/firmware", json={"version": "1.0.0", "hardware_models": ["m"]})
        ).json()
        empty = await http.put(f"/firmware/{fw['id']}/image", content=b"")
        assert empty.status_code == 422
        assert (await http.get(f"/firmware/{fw['id']}")).json()["status"] == "pending"
        ok = await http.put(f"/firmware/{fw['id']}/image", content=b"image")
        assert ok.status_code == 200
        assert ok.json()["size"] == 5


async def test_secrets_are_write_only_redacted_in_audit_and_published_in_full(
    api: Api, broker, unique
):
    tenant = f"t-{unique}"
    operator = await api.token(tenant, Role.OPERATOR)
    viewer = await api.token(tenant, Role.VIEWER)
    device_id = f"sec-{unique}"
    async with ConfigWatcher(broker, [device_id]) as watcher, api.client(operator) as http:
        group = await http.post("/groups", json={"name": "g", "template": CONFIG})
        assert group.status_code == 201, group.text
        await device(http, device_id, group="g")
        await watcher.settle(1)
    async with api.client(viewer) as http:
        shown = [
            (await http.get("/groups/g")).text,
            (await http.get(f"/devices/{device_id}/config")).text,
            (await http.get(f"/devices/{device_id}/config/history")).text,
        ]
        entries = (await http.get("/audit")).text
    for text in [*shown, entries]:
        assert PSK not in text
        assert RADIUS_SECRET not in text
    config = (await http_get_json(api, viewer, f"/devices/{device_id}/config"))["config"]
    assert config["ssids"][0]["security"] == {"mode": "wpa2-psk", "passphrase_set": True}
    assert config["ssids"][1]["security"]["radius"][0]["secret_set"] is True
    stored = await api.state.db[AUDIT_LOG].find({"tenant_id": tenant}).to_list()
    assert stored
    assert all(PSK not in str(e) and RADIUS_SECRET not in str(e) for e in stored)
    # the device gets its config in full, on its own topic
    [(_, message)] = watcher.messages
    assert message["config"]["ssids"][0]["security"]["passphrase"] == PSK
    assert message["config"]["ssids"][1]["security"]["radius"][0]["secret"] == RADIUS_SECRET


async def http_get_json(api: Api, token: str, path: str) -> dict:
    async with api.client(token) as http:
        return (await http.get(path)).json()


async def test_concurrent_rollouts_for_one_device_one_wins(api: Api, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        await device(http, f"race-{unique}", tags=["race"])
        fw = (
            await http.post("/firmware", json={"version": "2.0.0", "hardware_models": ["ap-1"]})
        ).json()
        await http.put(f"/firmware/{fw['id']}/image", content=b"img")
        spec = {
            "firmware": {"id": fw["id"], "version": "2.0.0"},
            "waves": {"kind": "fixed", "size": 1},
        }
        results = await asyncio.gather(
            *(
                http.post("/rollouts", json={**spec, "target": target})
                for target in (
                    {"tags": ["race"]},
                    {"device_ids": [f"race-{unique}"]},
                    {"hardware_model": "ap-1"},
                    {"tags": ["race"]},
                )
            )
        )
    codes = sorted(r.status_code for r in results)
    assert codes == [201, 409, 409, 409], [r.text for r in results]


async def test_concurrent_uploads_of_one_image_one_wins(api: Api, s3, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    images = [bytes([n]) * 200_000 for n in range(1, 4)]
    async with api.client(token) as http:
        fw = (
            await http.post("/firmware", json={"version": "1.0.0", "hardware_models": ["m"]})
        ).json()
        results = await asyncio.gather(
            *(http.put(f"/firmware/{fw['id']}/image", content=image) for image in images)
        )
        codes = sorted(r.status_code for r in results)
        assert codes == [200, 409, 409], [r.text for r in results]
        stored = (await http.get(f"/firmware/{fw['id']}")).json()
    key = f"firmware/t-{unique}/{fw['id']}"
    body = (await asyncio.to_thread(api.state.firmware._s3.get_object, Bucket=s3.bucket, Key=key))[
        "Body"
    ].read()
    assert hashlib.sha256(body).hexdigest() == stored["sha256"]
    assert body in images
