"""Broker metrics from Mosquitto's ``$SYS/#`` as Prometheus gauges, plus snapshots.

Measured on Mosquitto 2.0.11: ``$SYS`` values are published only when they change, and
ones unchanged for about a minute are not delivered to a new subscriber. So the service
keeps one long-lived subscription and :class:`BrokerMetrics` remembers the last value of
every topic. One topic name contains a space: ``$SYS/broker/retained messages/count``.
A rising ``publish/messages/dropped`` is worth an alert.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["GAUGES", "UPTIME", "BrokerMetrics", "broker_started", "parse_value"]

GAUGES: dict[str, tuple[str, str]] = {
    "$SYS/broker/clients/connected": ("clients_connected", "Connected clients"),
    "$SYS/broker/messages/received": ("messages_received", "Messages received since start"),
    "$SYS/broker/messages/sent": ("messages_sent", "Messages sent since start"),
    "$SYS/broker/publish/messages/dropped": (
        "messages_dropped",
        "PUBLISH messages dropped since start",
    ),
    "$SYS/broker/retained messages/count": ("retained_messages", "Retained messages"),
    "$SYS/broker/messages/stored": ("stored_messages", "Messages held in the store"),
    "$SYS/broker/store/messages/count": ("store_messages", "Messages held in the store"),
    "$SYS/broker/heap/current": ("heap_bytes", "Heap in use (bytes)"),
    "$SYS/broker/heap/maximum": ("heap_max_bytes", "Largest heap in use (bytes)"),
}
LOAD_PREFIX = "$SYS/broker/load/"
UPTIME = "$SYS/broker/uptime"


def parse_value(payload: bytes) -> float | None:
    """``$SYS`` payloads are numbers as text (``"12"``, ``"0.53"``); None otherwise."""
    text = payload.decode("ascii", "replace").strip().split(" ")[0]
    try:
        return float(text)
    except ValueError:
        return None


def broker_started(now: datetime, uptime_s: float, grain_s: int = 2) -> datetime:
    """When the broker started, rounded down to ``grain_s`` so that instances mostly agree
    on it. One that lands in the neighbouring slot causes a second (idempotent) resync;
    a coarser grain would merge two real restarts that are closer than it."""
    start = (now - timedelta(seconds=uptime_s)).timestamp()
    return datetime.fromtimestamp(start // grain_s * grain_s, now.tzinfo)


class BrokerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.last: dict[str, float] = {}
        self._gauges = {
            topic: Gauge(f"outpost_broker_{name}", doc, registry=registry)
            for topic, (name, doc) in GAUGES.items()
        }
        self._load = Gauge(
            "outpost_broker_load", "Mosquitto load averages", ["what", "window"], registry=registry
        )
        self._uptime = Gauge("outpost_broker_uptime_seconds", "Broker uptime", registry=registry)
        self._ignored = Counter(
            "outpost_broker_sys_ignored_total",
            "$SYS messages that were not numbers",
            registry=registry,
        )

    def observe(self, topic: str, payload: bytes) -> bool:
        """Record one ``$SYS`` message; True if it set a gauge."""
        value = parse_value(payload)
        if value is None:
            self._ignored.inc()
            return False
        if topic == UPTIME:
            self._uptime.set(value)
        elif topic in self._gauges:
            self._gauges[topic].set(value)
        elif topic.startswith(LOAD_PREFIX):
            what, _, window = topic.removeprefix(LOAD_PREFIX).rpartition("/")
            if not what:
                return False
            self._load.labels(what, window).set(value)
        else:
            return False
        self.last[topic] = value
        return True

    def snapshot(self, at: datetime) -> dict[str, Any]:
        """A ``broker_metrics`` document (keys without ``$`` or ``.`` for MongoDB)."""
        values = {
            topic.removeprefix("$SYS/broker/").replace(".", "_"): value
            for topic, value in sorted(self.last.items())
        }
        return {"at": at, "values": values}
