"""The PromQL expressions Outpost ships: alert rules and Grafana dashboard queries."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
METRIC = re.compile(r"\b(outpost_[a-z0-9_]+|up)\b")


def rule_expressions() -> list[str]:
    return [
        str(rule["expr"])
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def dashboard_expressions() -> list[str]:
    """Every ``expr`` of every panel target, as written (with Grafana variables)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in DASHBOARDS:
        walk(json.loads(path.read_text()))
    return found


def plain(expr: str) -> str:
    """A dashboard query with Grafana's variables filled in, as Prometheus would get it."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))
