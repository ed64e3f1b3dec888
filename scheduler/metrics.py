"""Prometheus metrics of one scheduler instance, in a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from outpost.health import dependency_gauge


@dataclass
class SchedulerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.claims = Counter(
            "outpost_scheduler_claims_total",
            "Claims and lease attempts by job and outcome",
            ["job", "outcome"],
            registry=r,
        )
        self.commands = Counter(
            "outpost_scheduler_commands_published_total",
            "Job commands the broker acknowledged",
            registry=r,
        )
        self.device_commands = Counter(
            "outpost_scheduler_device_commands_published_total",
            "Group device commands the broker acknowledged, by command (built-in or other) "
            "and kind (first send, or re-send of an unconfirmed one)",
            ["command", "kind"],
            registry=r,
        )
        self.republished = Counter(
            "outpost_scheduler_commands_republished_total",
            "Commands sent again after a takeover (same attempt)",
            registry=r,
        )
        self.reconciled = Counter(
            "outpost_scheduler_configs_republished_total",
            "Retained configs re-published by reconcile",
            registry=r,
        )
        self.mails = Counter(
            "outpost_scheduler_mails_sent_total", "Notification mails sent", registry=r
        )
        self.transitions = Counter(
            "outpost_scheduler_execution_transitions_total",
            "Execution status changes",
            ["status"],
            registry=r,
        )
        self.rejected = Counter(
            "outpost_scheduler_rejected_total",
            "Rollouts or firmware documents that could not be run",
            ["reason"],
            registry=r,
        )
        self.errors = Counter(
            "outpost_scheduler_errors_total", "Errors in a tick, by kind", ["kind"], registry=r
        )
        self.rollouts = Gauge(
            "outpost_scheduler_rollouts", "Rollouts seen by status", ["status"], registry=r
        )
        self.dependency_up = dependency_gauge(r)
        self.tick = Histogram(
            "outpost_scheduler_tick_seconds", "Duration of one job run", ["job"], registry=r
        )
