from __future__ import annotations

import json

import pytest

from bridge.errors import StoreError, StoreUnavailable
from bridge.http import health_routes, route_for
from bridge.metrics import BridgeMetrics
from bridge.retry import RetryPolicy, retry
from outpost.health import ReadinessChecks, flag_check


async def respond(line, routes):
    return await route_for(line, routes)()


async def test_routes_answer_health_readiness_and_metrics():
    metrics = BridgeMetrics()
    ready = [False]
    checks = ReadinessChecks(
        {"mqtt": flag_check(lambda: ready[0], "down")}, 1.0, metrics.dependency_up
    )
    routes = health_routes(metrics.registry, checks)
    assert (await respond(b"GET /healthz HTTP/1.1\r\n", routes))[0] == 200
    status, _, body = await respond(b"GET /readyz HTTP/1.1\r\n", routes)
    assert (status, json.loads(body)["failing"]) == (503, {"mqtt": "ConnectionError: down"})
    ready[0] = True
    assert (await respond(b"GET /readyz HTTP/1.1\r\n", routes))[0] == 200
    metrics.rejected.labels(reason="schema").inc()
    status, _, body = await respond(b"GET /metrics HTTP/1.1\r\n", routes)
    assert status == 200
    assert b'outpost_bridge_rejected_total{reason="schema"} 1.0' in body
    assert b'outpost_dependency_up{dependency="mqtt"} 1.0' in body
    assert (await respond(b"POST /healthz HTTP/1.1\r\n", routes))[0] == 405
    assert (await respond(b"GET /nope HTTP/1.1\r\n", routes))[0] == 404
    assert (await respond(b"", routes))[0] == 405


async def test_a_hanging_check_fails_within_its_timeout():
    import asyncio
    import time

    metrics = BridgeMetrics()

    async def frozen():
        await asyncio.sleep(60)

    checks = ReadinessChecks({"mongo": frozen}, 0.2, metrics.dependency_up)
    started = time.monotonic()
    result = await checks.run()
    assert time.monotonic() - started < 1.5
    assert result.status == 503
    assert result.body()["failing"] == {"mongo": "no answer within 0.2 s"}


def test_policy_backs_off_exponentially_up_to_a_cap():
    policy = RetryPolicy(first_wait=0.1, max_wait=1.0)
    assert [policy.wait(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]


async def test_retry_retries_transient_errors_only():
    calls = []
    retried = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise StoreUnavailable("down")
        return "ok"

    policy = RetryPolicy(first_wait=0.001)
    result = await retry(
        flaky, policy, on_retry=lambda n, e, d: retried.append(n), on_success=lambda: None
    )
    assert result == "ok"
    assert retried == [1, 2]

    async def broken():
        raise StoreError("bug")

    with pytest.raises(StoreError):
        await retry(broken, policy, on_retry=lambda *a: None, on_success=lambda: None)
