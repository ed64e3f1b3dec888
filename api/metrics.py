"""Prometheus metrics of one api instance, in its own registry (several apps per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from outpost.health import dependency_gauge


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "outpost_api_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "outpost_api_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.configs_published = Counter(
            "outpost_api_configs_published_total",
            "Desired configs published",
            ["result"],
            registry=self.registry,
        )
        self.commands = Counter(
            "outpost_api_commands_total",
            "Device commands: published to one device, refused by the broker, or queued for "
            "the scheduler (a group), by command (built-in name or other)",
            ["command", "result"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "outpost_api_auth_failures_total",
            "Requests refused at authentication, by reason",
            ["reason"],  # missing, malformed, unknown, revoked, expired
            registry=self.registry,
        )
        self.rejections = Counter(
            "outpost_api_rejections_total",
            "Refused requests by status",
            ["status"],
            registry=self.registry,
        )
        self.provisioning = Counter(
            "outpost_api_provisioning_total",
            "Provisioning requests by result: new, repeat, rebind, or the refusal reason",
            ["result"],
            registry=self.registry,
        )
        self.provisioning_seconds = Histogram(
            "outpost_api_provisioning_seconds",
            "Time to answer one provisioning request (from the queue to the reply sent)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.dependency_up = dependency_gauge(self.registry)
