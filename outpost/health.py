"""Readiness that answers in bounded time and names what is failing.

Every service answers ``/readyz`` by running its dependency checks (MongoDB ping, MQTT
connected) concurrently, each under ``OUTPOST_HTTP_READY_TIMEOUT_S``. A dependency that
hangs (a frozen database keeps its TCP connections open and never answers) is reported
as failing once that timeout passes, instead of holding the probe until a driver
timeout much later: measured before this module, a SIGSTOPped database kept the api's
``/readyz`` waiting ~21 s, longer than any orchestrator's probe timeout.

The body names each dependency and why it failed::

    {"ready": false, "checks": {"mongo": false, "mqtt": true},
     "failing": {"mongo": "no answer within 1.5 s"}}

Each run also sets ``outpost_dependency_up{dependency}`` (1 or 0) in the service's
registry; services run the checks when they are scraped too, so Prometheus sees a
database outage even when no orchestrator probes the service.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge

__all__ = [
    "Check",
    "Readiness",
    "ReadinessChecks",
    "dependency_gauge",
    "flag_check",
    "ping_check",
]

Check = Callable[[], Awaitable[None]]
"""A dependency check: returns when the dependency answers, raises when it does not."""


@dataclass(frozen=True)
class Readiness:
    """The outcome of one run of the checks."""

    failing: Mapping[str, str] = field(default_factory=dict)
    names: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return not self.failing

    @property
    def status(self) -> int:
        return 200 if self.ready else 503

    def body(self) -> dict[str, object]:
        checks = {name: name not in self.failing for name in self.names}
        out: dict[str, object] = {"ready": self.ready, "checks": checks}
        if self.failing:
            out["failing"] = dict(self.failing)
        return out

    def json(self) -> bytes:
        return json.dumps(self.body()).encode() + b"\n"


def dependency_gauge(registry: CollectorRegistry) -> Gauge:
    """``outpost_dependency_up{dependency}``: made once per registry, with its metrics."""
    return Gauge(
        "outpost_dependency_up",
        "1 when the dependency answered the last readiness check in time",
        ["dependency"],
        registry=registry,
    )


class ReadinessChecks:
    """Named checks run concurrently, each bounded by ``timeout_s``; results in ``up``."""

    def __init__(self, checks: Mapping[str, Check], timeout_s: float, up: Gauge) -> None:
        self._checks = dict(checks)
        self._timeout = timeout_s
        self._up = up

    async def run(self) -> Readiness:
        names = tuple(self._checks)
        results = await asyncio.gather(*(self._one(self._checks[n]) for n in names))
        failing = {n: why for n, why in zip(names, results, strict=True) if why is not None}
        for name in names:
            self._up.labels(name).set(0 if name in failing else 1)
        return Readiness(failing, names)

    async def _one(self, check: Check) -> str | None:
        """None if the dependency answered in time, else why not (one line)."""
        try:
            async with asyncio.timeout(self._timeout):
                await check()
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure of a check is "not ready"
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        return None


def ping_check(ping: Callable[[], Awaitable[object]]) -> Check:
    """A check from a call that raises when the dependency does not answer."""

    async def check() -> None:
        await ping()

    return check


def flag_check(is_up: Callable[[], bool], why: str) -> Check:
    """A check from a flag the service keeps (e.g. "the MQTT session is connected")."""

    async def check() -> None:
        if not is_up():
            raise ConnectionError(why)

    return check
