"""Prometheus for real: Debian's prometheus scrapes bridge, api and scheduler processes
with the rules of ``deploy/prometheus/rules`` (intervals of a second and every ``for:``
shortened, the rest as shipped).

- Every metric the rules and the Grafana dashboards name is one the services export
  (compared with their live ``/metrics``), and every expression parses (Prometheus'
  own query API answers it).
- Killing the bridge while devices publish fires ``OutpostBridgeDown``, read from
  Prometheus' alerts API; a new bridge resolves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.local import free_port
from deploy.local.prometheus import Prometheus
from schemas.documents import DEVICES
from tests.integration.bridge.helpers import Publisher, eventually, state_payload
from tests.integration.services import Service, service_env
from tests.promql import dashboard_expressions, metric_names, plain, rule_expressions

# one worker runs the module: its stack is module-scoped
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prometheus_stack")]


def exported_names(text: str) -> set[str]:
    """Metric names in an exposition, with the series names their types imply."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
            if kind == "counter":
                names.update({f"{name}_total", f"{name}_created"})
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
def stack(broker, mongo, s3, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """One set of processes for the module: starting them is most of its time."""
    unique = secrets.token_hex(4)
    tmp_path = tmp_path_factory.mktemp("prometheus-live")
    tmp_path.chmod(0o755)
    env = {
        **service_env(broker, mongo.url, f"prom{unique}", s3, unique),
        "OUTPOST_SCHEDULER_FLEET_SECONDS": "1",
    }
    services = {
        c: Service(c, env, tmp_path / f"{c}.log", broker=broker)
        for c in ("bridge", "api", "scheduler")
    }
    prometheus = Prometheus(
        tmp_path / "prometheus",
        free_port(),
        targets={f"outpost-{c}": [f"127.0.0.1:{s.port}"] for c, s in services.items()},
        scrape_interval="2s",
        scrape_timeout="2s",
        evaluation_interval="1s",
        rule_for="2s",
    )
    try:
        prometheus.start()
        for service in services.values():  # each test starts from a stack that answers
            service.wait_ready(60)
        yield {
            "services": services,
            "prometheus": prometheus,
            "env": env,
            "database": f"prom{unique}",
            "logs": tmp_path,
        }
    finally:
        prometheus.stop()
        for service in services.values():
            service.stop()


async def _targets_up(prometheus: Prometheus, jobs: set[str]) -> bool:
    data = await asyncio.to_thread(prometheus.query, "/api/v1/query", query="up == 1")
    return {r["metric"]["job"] for r in data["result"]} >= jobs


async def _firing(prometheus: Prometheus, alert: str) -> bool:
    data = await asyncio.to_thread(prometheus.query, "/api/v1/alerts")
    return any(a["labels"]["alertname"] == alert and a["state"] == "firing" for a in data["alerts"])


async def test_rules_and_dashboards_name_only_exported_metrics_and_parse(stack):
    services: dict[str, Service] = stack["services"]
    prometheus: Prometheus = stack["prometheus"]
    jobs = {f"outpost-{c}" for c in services}
    await eventually(lambda: _targets_up(prometheus, jobs), within=60, what="targets up")
    exported = {"up"}
    for service in services.values():
        status, text, _ = await asyncio.to_thread(service.get, "/metrics")
        assert status == 200
        exported |= exported_names(text)
    from cli.status import QUERIES

    expressions = rule_expressions() + dashboard_expressions() + list(QUERIES.values())
    assert len(expressions) > 60
    named = {n for expr in expressions for n in metric_names(expr)}
    assert named - exported == set(), "named in rules or dashboards, exported by no service"
    for expr in expressions:  # Prometheus parses each (a parse error is an HTTP 400)
        await asyncio.to_thread(prometheus.query, "/api/v1/query", query=plain(expr))


async def test_killing_the_bridge_while_devices_publish_fires_its_alert(
    stack, broker, mongo, unique
):
    services: dict[str, Service] = stack["services"]
    prometheus: Prometheus = stack["prometheus"]
    await eventually(
        lambda: _targets_up(prometheus, {"outpost-bridge"}), within=60, what="bridge scraped"
    )

    async def silent() -> bool:  # it may have fired while the bridge was starting
        return not await _firing(prometheus, "OutpostBridgeDown")

    await eventually(silent, within=30, what="no alert while the bridge runs")
    ids = [f"d{unique}-{i}" for i in range(20)]
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url)
    await client[stack["database"]][DEVICES].insert_many([{"_id": i} for i in ids])
    await client.close()
    publisher = Publisher(broker, f"p{unique}")

    async def publish() -> None:
        for seq in range(1, 10_000):
            for device in ids:
                publisher.publish(f"devices/{device}/state", state_payload(device, 1, seq, n=seq))
            await asyncio.sleep(0.2)

    publishing = asyncio.create_task(publish(), name="devices publish")
    try:
        bridge = services["bridge"]
        bridge.proc.send_signal(signal.SIGKILL)  # the process this test started
        bridge.proc.wait(10)
        await eventually(
            lambda: _firing(prometheus, "OutpostBridgeDown"), within=60, what="alert firing"
        )
        services["bridge"] = Service(
            "bridge", stack["env"], stack["logs"] / "bridge-2.log", port=bridge.port, broker=broker
        )
        await asyncio.to_thread(services["bridge"].wait_ready, 60)
        await eventually(silent, within=60, what="alert resolved by a new bridge")
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
        publisher.close()


async def test_outpost_status_reads_the_fleet_and_rollouts_from_prometheus_and_the_api(
    stack, broker, mongo
):
    from datetime import UTC, datetime, timedelta

    import httpx
    from pymongo import AsyncMongoClient

    from api.auth import Role, new_token
    from api.store import tenants
    from device.sim import Broker, Fleet, FleetOptions
    from outpost.store import Store
    from schemas.documents import JOB_EXECUTIONS, ROLLOUTS
    from tests.integration.scheduler.conftest import rollout_doc

    services: dict[str, Service] = stack["services"]
    prometheus: Prometheus = stack["prometheus"]
    for service in services.values():
        service.assert_alive()
    tenant = f"t{secrets.token_hex(3)}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url, tz_aware=True)
    db = client[stack["database"]]
    try:
        await tenants.create_tenant(Store(db), tenant, tenant)
        token, admin = new_token(), new_token()
        await tenants.create_token(Store(db), token, tenant, Role.VIEWER, "ops", None)
        await tenants.create_token(Store(db), admin, tenant, Role.ADMIN, "setup", None)
        rollout = secrets.token_hex(12)
        later = {"start_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}
        await db[ROLLOUTS].insert_one(
            rollout_doc(rollout, {"_id": "fw", "version": "2.0"}, schedule=later)
            | {"tenant_id": tenant}
        )
        await db[JOB_EXECUTIONS].insert_many(
            [
                {
                    "_id": f"{rollout}:{i}",
                    "tenant_id": tenant,
                    "rollout_id": rollout,
                    "wave": 1,
                    "status": s,
                }
                for i, s in enumerate(["succeeded", "failed", "queued", "in_progress"])
            ]
        )
    finally:
        await client.close()

    # three devices registered through the api, online through the broker and the bridge
    options = FleetOptions(devices=3, prefix=f"s{tenant}", hardware_model="hw1")
    ids = [options.device_id(i) for i in range(options.devices)]
    api_url = f"http://127.0.0.1:{services['api'].port}"
    passwords: dict[str, str] = {}
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {admin.secret}"}, timeout=30
    ) as http:
        for device_id in ids:
            try:
                made = await http.post("/devices", json={"id": device_id, "hardware_model": "hw1"})
            except httpx.TransportError:
                services["api"].assert_alive()  # how it ended, if it did
                raise
            assert made.status_code == 201, made.text
            passwords[device_id] = made.json()["credentials"]["password"]
        devices = Broker(
            "127.0.0.1",
            broker.tls_port,
            tls=True,
            ca_file=str(broker.ca_file),
            accounts=passwords,
        )
        try:
            async with Fleet(options, devices, logging.getLogger("test.status")) as fleet:
                await fleet.wait_ready()
                await _status_shows(services, prometheus, tenant, token, rollout)
        finally:
            for device_id in ids:  # retained presence and accounts go with them
                assert (await http.delete(f"/devices/{device_id}")).status_code == 204


async def _status_shows(services, prometheus, tenant, token, rollout) -> None:
    from cli.status import QUERIES, StatusSettings, fetch

    settings = StatusSettings(
        api_url=f"http://127.0.0.1:{services['api'].port}",
        prometheus_url=prometheus.url,
        token=token.secret,
    )

    async def counted() -> bool:
        snap = await asyncio.to_thread(fetch, settings)
        return snap.devices.get(tenant, {}).get("online") == 3

    # Every target scraped once, not only the scheduler's gauges: Prometheus scrapes each
    # target at its own offset in the interval, so when this test is the first on a fresh
    # stack the fleet gauges can be in before the bridge's first scrape (its `up` absent).
    jobs = {f"outpost-{c}" for c in services}
    await eventually(lambda: _targets_up(prometheus, jobs), within=60, what="targets scraped")
    await eventually(counted, within=60, what="fleet gauges in Prometheus")
    snap = await asyncio.to_thread(fetch, settings)
    assert snap.errors == []
    assert snap.out_of_sync.get(tenant) == 0
    (row,) = [r for r in snap.rollouts if r.id == rollout]
    assert (row.status, row.total, row.settled) == ("scheduled", 4, 2)
    assert snap.alerts is not None
    assert snap.broker["bridges"] is not None
    for expr in QUERIES.values():  # parsed by Prometheus too (a 400 raises)
        await asyncio.to_thread(prometheus.query, "/api/v1/query", query=expr)
