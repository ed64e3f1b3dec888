"""Health, readiness, metrics and the problem+json shape of framework errors."""

from __future__ import annotations

import pytest

from api.auth import Role
from tests.integration.api.conftest import Api

pytestmark = pytest.mark.integration
PROBLEM = "application/problem+json"


async def test_health_ready_metrics(api: Api, unique):
    token = await api.token(f"t-{unique}", Role.VIEWER)
    async with api.client(token) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"mongo": True, "mqtt": True}
        assert (await http.get(f"/devices/x-{unique}")).status_code == 404
        metrics = (await http.get("/metrics")).text
        assert 'route="/devices/{device_id}",status="404"' in metrics
        assert "outpost_api_request_seconds_bucket" in metrics
        assert "docs" in (await http.get("/docs")).text


async def test_framework_errors_are_problems(api: Api, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        missing = await http.get("/no-such-route")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == PROBLEM
        wrong = await http.put("/devices")
        assert wrong.status_code == 405
        assert wrong.headers["content-type"] == PROBLEM
        big = await http.post(
            "/devices",
            content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
            headers={"content-type": "application/json"},
        )
        assert big.status_code == 413
        assert big.json()["status"] == 413
        not_json = await http.post(
            "/devices", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 422
        assert not_json.headers["content-type"] == PROBLEM
        device = f"x-{unique}"  # registered: only the header can be wrong
        registered = await http.post("/devices", json={"id": device, "hardware_model": "m"})
        assert registered.status_code == 201
        bad_header = await http.put(
            f"/devices/{device}/config/overrides",
            headers={"If-Match": 'W/"abc"'},
            json={"overrides": {}},
        )
        assert bad_header.status_code == 412  # a weak tag never matches
        too_many = await http.get("/devices", params={"limit": 1000})
        assert too_many.status_code == 422
        assert too_many.json()["errors"][0]["loc"] == ["query", "limit"]


async def test_ops_broker_summarizes_the_scheduler_snapshots(api: Api, unique):
    from datetime import UTC, datetime, timedelta

    from schemas.documents import BROKER_METRICS

    now = datetime.now(UTC)
    await api.state.db[BROKER_METRICS].insert_many(
        [
            {
                "at": now - timedelta(minutes=70),
                "values": {"clients/connected": 10, "publish/messages/dropped": 2},
            },
            {
                "at": now - timedelta(seconds=5),
                "values": {"clients/connected": 12, "publish/messages/dropped": 9},
            },
        ]
    )
    viewer = await api.token(f"v-{unique}", Role.VIEWER)
    async with api.client(viewer) as http:
        assert (await http.get("/ops/broker")).status_code == 403
    admin = await api.token(f"a-{unique}", Role.ADMIN)
    async with api.client(admin) as http:
        summary = (await http.get("/ops/broker")).json()
    assert summary["values"]["clients/connected"] == 12
    assert summary["dropped_in_window"] == 7
    assert summary["alerts"] == ["the broker dropped 7 messages in the last hour"]
