"""Debian's Prometheus 2.x scraping the stack's services, with Outpost's alert rules.

The rules are ``deploy/prometheus/rules/*.yml`` (tested by ``promtool test rules``);
:class:`Prometheus` copies them next to a generated ``prometheus.yml`` whose scrape jobs
are ``outpost-bridge``, ``outpost-api`` and ``outpost-scheduler`` (the scheduler also
exports the broker's ``$SYS`` figures and the fleet gauges). Tests shorten the scrape
and evaluation intervals and every rule's ``for:`` so an alert fires in seconds.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.local import tools
from deploy.local.servers import HOST, Server

__all__ = ["JOBS", "RULES_DIR", "Prometheus"]

RULES_DIR = Path(__file__).resolve().parents[1] / "prometheus" / "rules"
JOBS = ("outpost-bridge", "outpost-api", "outpost-scheduler")


@dataclass
class Prometheus(Server):
    """Prometheus on ``port`` (loopback), its data and config under ``root``."""

    targets: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Scrape job -> ``host:port`` targets, e.g. ``{"outpost-bridge": ["127.0.0.1:18081"]}``."""
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    scrape_timeout: str = "5s"
    """Above OUTPOST_HTTP_READY_TIMEOUT_S: a scrape runs the readiness checks first."""
    rule_for: str | None = None
    """Replace every rule's ``for:`` (tests: an alert fires in seconds, not minutes)."""
    name: str = field(init=False, default="prometheus")
    port_variable: str = field(init=False, default="OUTPOST_DEV_PROMETHEUS_PORT")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
                "scrape_timeout": self.scrape_timeout,
            },
            "rule_files": ["rules/*.yml"],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                for job, targets in self.targets.items()
            ],
        }

    def _prepare(self) -> None:
        self._binary = tools.prometheus()
        rules = self.root / "rules"
        rules.mkdir(parents=True, exist_ok=True)
        for source in sorted(RULES_DIR.glob("*.yml")):
            groups = yaml.safe_load(source.read_text())
            if self.rule_for is not None:
                for group in groups["groups"]:
                    for rule in group["rules"]:
                        rule["for"] = self.rule_for
            (rules / source.name).write_text(yaml.safe_dump(groups, sort_keys=False))
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def _argv(self) -> list[str]:
        return [
            self._binary,
            f"--config.file={self.root / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.root / 'data'}",
            "--storage.tsdb.retention.time=7d",
            f"--web.listen-address={HOST}:{self.port}",
            "--log.level=warn",
        ]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def query(self, path: str, **params: str) -> Any:
        """GET an API path (``/api/v1/alerts``) and return its ``data``."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body}")
        return body["data"]
