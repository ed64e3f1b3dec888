"""Prometheus metrics of one bridge instance, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from outpost.health import dependency_gauge

__all__ = ["BridgeMetrics"]

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_*: this process's CPU, memory, open files
        self.messages = Counter(
            "outpost_bridge_messages", "Accepted messages by channel", ["channel"], registry=r
        )
        self.rejected = Counter(
            "outpost_bridge_rejected", "Rejected messages by reason", ["reason"], registry=r
        )
        self.skipped = Counter(
            "outpost_bridge_skipped",
            "Accepted messages not written, by reason: coalesced (a newer one of the same "
            "batch was), older (the stored key is as new: a duplicate, a late message, or a "
            "device whose keys went back and need a reset), unchanged (same state, recently "
            "refreshed), duplicate (a second result of one command)",
            ["reason"],
            registry=r,
        )
        self.command_results = Counter(
            "outpost_bridge_command_results",
            "Command results stored, by command (built-in name or other) and status",
            ["command", "status"],
            registry=r,
        )
        self.acked = Counter(
            "outpost_bridge_acked", "Messages acknowledged to the broker", registry=r
        )
        self.db_ops = Counter("outpost_bridge_db_ops", "Conditional updates sent", registry=r)
        self.db_writes = Counter(
            "outpost_bridge_db_writes",
            "Documents actually modified (idle fleet: stays 0)",
            registry=r,
        )
        self.dead_letters = Counter(
            "outpost_bridge_dead_letters", "Dead-letter samples written", registry=r
        )
        self.store_retries = Counter(
            "outpost_bridge_store_retries",
            "Batch writes retried after a transient error",
            registry=r,
        )
        self.batch_size = Histogram(
            "outpost_bridge_batch_size",
            "Messages per batch",
            buckets=(1, 5, 20, 100, 500, 1000, 5000, 20_000),
            registry=r,
        )
        self.write_seconds = Histogram(
            "outpost_bridge_write_seconds",
            "Time to write one batch (retries included)",
            buckets=_LATENCY,
            registry=r,
        )
        self.lag_seconds = Histogram(
            "outpost_bridge_lag_seconds",
            "Device timestamp to stored (state and job status)",
            buckets=_LATENCY,
            registry=r,
        )
        self.ack_delay_seconds = Histogram(
            "outpost_bridge_ack_delay_seconds",
            "Received to acknowledged",
            buckets=_LATENCY,
            registry=r,
        )
        self.in_flight = Gauge(
            "outpost_bridge_in_flight", "Messages received and not yet acknowledged", registry=r
        )
        self.ready = Gauge(
            "outpost_bridge_ready", "1 when connected and MongoDB answers", registry=r
        )
        self.dependency_up = dependency_gauge(r)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample, e.g. ``value("outpost_bridge_db_writes_total")``.

        Collects only the metric that has ``name`` (13 µs): the registry's own
        ``get_sample_value`` collects every metric (0.5 ms), which a caller polling every
        20 ms while the bridge works took 2.5 % of the bridge's loop."""
        for metric in self.registry.restricted_registry([name]).collect():
            for sample in metric.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0
