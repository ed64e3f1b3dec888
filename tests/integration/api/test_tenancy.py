"""Tenant isolation on every route, roles, revoked tokens, audit. Routes come from the
OpenAPI spec, so a new route without a case here fails the test."""

from __future__ import annotations

import json

import pytest

from api.auth import Role
from tests.integration.api.conftest import Api

pytestmark = pytest.mark.integration
PUBLIC = {"/healthz", "/readyz", "/metrics"}
# the shared broker's own numbers: no tenant's data, the same for every tenant's admins
SHARED = {"/ops/broker"}
CONFIG = {"country": "US", "radios": {"2.4GHz": {"channel": 6}}}


async def seed(http, unique: str) -> dict[str, str]:
    """Tenant A's objects: a device in a group, uploaded firmware, a rollout, a token."""
    assert (await http.post("/groups", json={"name": "ga", "template": CONFIG})).status_code == 201
    device = await http.post(
        "/devices", json={"id": f"a-{unique}", "hardware_model": "ap-1", "group": "ga"}
    )
    assert device.status_code == 201, device.text
    fw = (
        await http.post("/firmware", json={"version": "1.0.0", "hardware_models": ["ap-1"]})
    ).json()
    assert (await http.put(f"/firmware/{fw['id']}/image", content=b"img")).status_code == 200
    rollout = await http.post(
        "/rollouts",
        json={
            "firmware": {"id": fw["id"], "version": "1.0.0"},
            "target": {"group": "ga"},
            "waves": {"kind": "fixed", "size": 1},
        },
    )
    assert rollout.status_code == 201, rollout.text
    token = (await http.post("/tokens", json={"name": "a2", "role": "viewer"})).json()
    claim = await http.post("/claims", json={"name": "ca", "group": "ga"})
    assert claim.status_code == 201, claim.text
    command = await http.post(f"/devices/a-{unique}/commands", json={"name": "counters"})
    assert command.status_code == 202, command.text
    bulk = await http.post("/commands", json={"name": "counters", "target": {"group": "ga"}})
    assert bulk.status_code == 202, bulk.text
    return {
        "bulk_id": bulk.json()["id"],
        "command_id": command.json()["id"],
        "claim_id": claim.json()["id"],
        "device_id": f"a-{unique}",
        "name": "ga",
        "firmware_id": fw["id"],
        "rollout_id": rollout.json()["id"],
        "token_id": token["token_id"],
    }


def bodies(ids: dict[str, str], unique: str) -> dict[tuple[str, str], dict]:
    """A request body per (method, template) that would succeed for the owner."""
    spec = {
        "firmware": {"id": ids["firmware_id"], "version": "1.0.0"},
        "target": {"device_ids": [ids["device_id"]]},
        "waves": {"kind": "fixed", "size": 1},
    }
    return {
        ("post", "/tokens"): {"name": "x", "role": "viewer"},
        ("post", "/devices"): {"id": f"b-{unique}", "hardware_model": "ap-1", "group": "ga"},
        ("patch", "/devices/{device_id}"): {"tags": ["stolen"]},
        ("put", "/devices/{device_id}/config/overrides"): {"overrides": {}},
        ("post", "/devices/{device_id}/config/rollback"): {"version": 1},
        ("post", "/groups"): {"name": "gb", "template": {}},
        ("put", "/groups/{name}/template"): {"template": {}},
        ("post", "/firmware"): {"version": "9.9.9", "hardware_models": ["ap-1"]},
        ("post", "/rollouts"): spec,
        ("post", "/rollouts/dry-run"): spec,
        ("post", "/claims"): {"name": "cb", "group": "ga"},
        ("post", "/devices/{device_id}/commands"): {"name": "reboot"},
        ("post", "/commands"): {"name": "reboot", "target": {"device_ids": [ids["device_id"]]}},
    }


def operations(app) -> list[tuple[str, str]]:
    paths = app.openapi()["paths"]
    return [(m, p) for p, ops in paths.items() if p not in PUBLIC | SHARED for m in ops]


async def call(http, method: str, template: str, ids: dict[str, str], body: dict | None):
    path = template.format(**ids)
    headers = {"If-Match": "1"}
    if template.endswith("/image"):
        return await http.put(path, content=b"evil", headers=headers)
    return await http.request(method.upper(), path, json=body, headers=headers)


async def test_other_tenant_can_neither_read_nor_change(api: Api, unique):
    a = await api.token(f"a-{unique}", Role.ADMIN)
    b = await api.token(f"b-{unique}", Role.ADMIN)
    async with api.client(a) as http_a, api.client(b) as http_b:
        ids = await seed(http_a, unique)
        before = {
            c: await api.state.db[c]
            .find({}, {"_id": 1, "tags": 1, "status": 1, "version": 1, "revoked_at": 1})
            .sort("_id")
            .to_list(None)
            for c in (
                "devices",
                "groups",
                "firmware",
                "rollouts",
                "api_tokens",
                "provisioning_claims",
                "commands",
                "command_bulks",
            )
        }
        create_ok = {
            ("post", "/tokens"),
            ("post", "/groups"),
            ("post", "/firmware"),
            ("post", "/devices"),
            ("post", "/claims"),
        }
        for method, template in operations(api.app):
            body = bodies(ids, unique).get((method, template))
            response = await call(http_b, method, template, ids, body)
            where = f"{method.upper()} {template}"
            assert response.status_code < 500, f"{where}: {response.text}"
            text = response.text if response.status_code < 400 else ""  # 404s echo the id
            leaks = (
                "device_id",
                "firmware_id",
                "rollout_id",
                "token_id",
                "claim_id",
                "command_id",
                "bulk_id",
            )
            for value in (ids[k] for k in leaks):
                assert value not in text, f"{where} leaked {value}: {text[:300]}"
            if "{" in template:
                assert response.status_code == 404, f"{where}: {response.text}"
            elif method == "get":
                assert response.status_code == 200, where
            elif (method, template) in create_ok:
                assert response.status_code in (201, 422), f"{where}: {text}"
            else:  # rollouts on A's firmware/devices: refused as unknown
                assert response.status_code in (200, 422), f"{where}: {text}"
                if response.status_code == 200:
                    assert response.json()["targeted"] == 0
        after = {
            c: await api.state.db[c]
            .find(
                {"_id": {"$in": [d["_id"] for d in docs]}},
                {"_id": 1, "tags": 1, "status": 1, "version": 1, "revoked_at": 1},
            )
            .sort("_id")
            .to_list(None)
            for c, docs in before.items()
        }
        assert after == before
        assert (await http_a.get(f"/devices/{ids['device_id']}")).status_code == 200


async def test_viewer_cannot_write_and_revoked_token_is_refused(api: Api, unique):
    admin = await api.token(f"v-{unique}", Role.ADMIN)
    viewer = await api.token(f"v-{unique}", Role.VIEWER)
    async with api.client(admin) as http_admin, api.client(viewer) as http_viewer:
        ids = await seed(http_admin, unique)
        for method, template in operations(api.app):
            if method == "get" or template == "/rollouts/dry-run":
                continue
            body = bodies(ids, unique).get((method, template))
            response = await call(http_viewer, method, template, ids, body)
            assert response.status_code == 403, f"{method} {template}: {response.text}"
            assert response.headers["content-type"] == "application/problem+json"
        assert (await http_viewer.get("/devices")).status_code == 200
        assert (await http_viewer.get("/tokens")).status_code == 403  # admins only

        created = (await http_admin.post("/tokens", json={"name": "t", "role": "operator"})).json()
        async with api.client(created["token"]) as http_op:
            assert (await http_op.get("/devices")).status_code == 200
            revoked = await http_admin.delete(f"/tokens/{created['token_id']}")
            assert revoked.status_code == 204
            refused = await http_op.get("/devices")
            assert refused.status_code == 401
            assert refused.json()["detail"] == "unknown or revoked token"
        async with api.client("opt_forged_token") as forged, api.client() as anonymous:
            assert (await forged.get("/devices")).status_code == 401
            assert (await anonymous.get("/devices")).status_code == 401
        stored = await api.state.db["api_tokens"].find_one({"token_id": created["token_id"]})
        assert created["token"] not in json.dumps(stored, default=str)

        audit = (await http_admin.get("/audit", params={"limit": 200})).json()["items"]
        actions = {e["action"] for e in audit}
        assert {
            "group.create",
            "device.register",
            "firmware.create",
            "firmware.upload",
            "rollout.create",
            "token.create",
            "token.revoke",
            "claim.create",
        } <= actions
        entry = next(e for e in audit if e["action"] == "token.revoke")
        assert entry["target"] == f"token:{created['token_id']}"
        assert entry["at"]
