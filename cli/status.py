"""``outpost status``: the ops view in a terminal.

It reads two HTTP sources and never the database: Prometheus (the fleet gauges, the
broker's figures, the bridges' throughput, firing alerts) and the api (active rollouts and
their executions, with a tenant's token). ``--watch`` redraws every few seconds. A source
that does not answer is named in red; the rest is still shown.

The PromQL it runs is :data:`QUERIES` (parsed and checked against exported metric names
with the rules and dashboards, ``tests/integration/test_prometheus_live.py``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from outpost.settings import HttpUrlStr, OutpostSettings, SettingsError, load

__all__ = ["QUERIES", "Snapshot", "StatusSettings", "fetch", "render", "status"]

M = "max without (instance, job)"  # every scheduler exports the same fleet/broker figures
QUERIES: dict[str, str] = {
    "devices": f"sum by (tenant, presence) ({M} (outpost_fleet_devices))",
    "out_of_sync": f"sum by (tenant) ({M} (outpost_fleet_configs_out_of_sync))",
    "clients": f"max({M} (outpost_broker_clients_connected))",
    "received": f"max({M} (deriv(outpost_broker_messages_received[2m])))",
    "sent": f"max({M} (deriv(outpost_broker_messages_sent[2m])))",
    "dropped": f"max({M} (delta(outpost_broker_messages_dropped[5m])))",
    "stored": "sum(rate(outpost_bridge_messages_total[2m]))",
    "in_flight": "sum(outpost_bridge_in_flight)",
    "bridges": 'sum(up{job="outpost-bridge"})',
}
ACTIVE = ("running", "paused", "scheduled", "canceling")
FINAL = ("succeeded", "failed", "rejected", "timed_out", "canceled")


class StatusSettings(OutpostSettings):
    """``OUTPOST_STATUS_*``: where ``outpost status`` reads (``outpost dev up`` sets them)."""

    model_config = SettingsConfigDict(env_prefix="OUTPOST_STATUS_")
    api_url: HttpUrlStr = Field(default="http://127.0.0.1:8080", description="The api")
    token: SecretStr | None = Field(
        default=None, description="An api token (viewer is enough) for the rollouts"
    )
    token_file: Path | None = Field(
        default=None, description="A file holding that token (when OUTPOST_STATUS_TOKEN is unset)"
    )
    prometheus_url: HttpUrlStr = Field(
        default="http://127.0.0.1:9090", description="The Prometheus scraping the services"
    )
    timeout_s: float = Field(default=3.0, gt=0, le=60, description="Longest wait per request")

    def bearer(self) -> str | None:
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None and self.token_file.exists():
            return self.token_file.read_text().strip() or None
        return None


@dataclass(frozen=True)
class RolloutRow:
    id: str
    status: str
    wave: int
    executions: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.executions.values())

    @property
    def settled(self) -> int:
        return sum(n for s, n in self.executions.items() if s in FINAL)


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    summary: str
    since: str


@dataclass
class Snapshot:
    at: datetime
    devices: dict[str, dict[str, int]] = field(default_factory=dict)  # tenant -> presence -> n
    out_of_sync: dict[str, int] = field(default_factory=dict)
    broker: dict[str, float | None] = field(default_factory=dict)
    rollouts: list[RolloutRow] = field(default_factory=list)
    alerts: list[Alert] | None = None  # None: Prometheus did not answer
    errors: list[str] = field(default_factory=list)


# -- reading -----------------------------------------------------------------------------


def _get(url: str, timeout: float, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def _prom(settings: StatusSettings, expr: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expr})
    body = _get(f"{settings.prometheus_url}/api/v1/query?{query}", settings.timeout_s)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _scalar(settings: StatusSettings, expr: str) -> float | None:
    result = _prom(settings, expr)
    return float(result[0]["value"][1]) if result else None


def _from_prometheus(settings: StatusSettings, snap: Snapshot) -> None:
    for sample in _prom(settings, QUERIES["devices"]):
        labels = sample["metric"]
        tenant = snap.devices.setdefault(labels.get("tenant", ""), {})
        tenant[labels.get("presence", "")] = int(float(sample["value"][1]))
    for sample in _prom(settings, QUERIES["out_of_sync"]):
        snap.out_of_sync[sample["metric"].get("tenant", "")] = int(float(sample["value"][1]))
    for name in ("clients", "received", "sent", "dropped", "stored", "in_flight", "bridges"):
        snap.broker[name] = _scalar(settings, QUERIES[name])
    body = _get(f"{settings.prometheus_url}/api/v1/alerts", settings.timeout_s)
    snap.alerts = []
    for alert in body["data"]["alerts"]:
        if alert["state"] != "firing":
            continue
        snap.alerts.append(
            Alert(
                alert["labels"].get("alertname", "?"),
                alert["labels"].get("severity", ""),
                alert.get("annotations", {}).get("summary", ""),
                str(alert.get("activeAt", ""))[:19].replace("T", " "),
            )
        )


def _from_api(settings: StatusSettings, snap: Snapshot) -> None:
    token = settings.bearer()
    if token is None:
        snap.errors.append("api: no token (OUTPOST_STATUS_TOKEN or OUTPOST_STATUS_TOKEN_FILE)")
        return
    cursor: str | None = None
    while True:
        query = "?limit=100" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        page = _get(f"{settings.api_url}/rollouts{query}", settings.timeout_s, token)
        for item in page["items"]:
            if item["status"] not in ACTIVE:
                continue
            progress = _get(
                f"{settings.api_url}/rollouts/{item['id']}/progress", settings.timeout_s, token
            )
            snap.rollouts.append(
                RolloutRow(
                    item["id"],
                    item["status"],
                    int(item.get("progress", {}).get("wave", 0)),
                    {k: int(v) for k, v in progress["executions"].items()},
                )
            )
        cursor = page.get("next_cursor")
        if not cursor:
            return


def fetch(settings: StatusSettings) -> Snapshot:
    """One reading of both sources; a failing source becomes a line in ``errors``."""
    snap = Snapshot(datetime.now(UTC))
    for name, url, read in (
        ("prometheus", settings.prometheus_url, _from_prometheus),
        ("api", settings.api_url, _from_api),
    ):
        try:
            read(settings, snap)
        except (OSError, ValueError, KeyError) as exc:  # URLError is an OSError
            why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            snap.errors.append(f"{name} ({url}): {why}")
    return snap


# -- drawing -----------------------------------------------------------------------------


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return (
        f"{value:,.0f}{unit}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}{unit}"
    )


def _fleet(snap: Snapshot) -> Table:
    table = Table("tenant", "online", "offline", "unknown", "never", "out of sync", title="Fleet")
    for tenant in sorted(set(snap.devices) | set(snap.out_of_sync)):
        counts = snap.devices.get(tenant, {})
        table.add_row(
            tenant,
            Text(str(counts.get("online", 0)), style="green"),
            Text(str(counts.get("offline", 0)), style="red" if counts.get("offline") else ""),
            Text(str(counts.get("unknown", 0)), style="yellow" if counts.get("unknown") else ""),
            str(counts.get("never", 0)),
            Text(str(snap.out_of_sync.get(tenant, 0)), style="yellow"),
        )
    return table


def _rollouts(snap: Snapshot) -> Table:
    table = Table("rollout", "status", "wave", "progress", "settled", "failed", title="Rollouts")
    for row in snap.rollouts:
        failed = sum(row.executions.get(s, 0) for s in ("failed", "rejected", "timed_out"))
        table.add_row(
            row.id,
            row.status,
            str(row.wave),
            ProgressBar(total=max(row.total, 1), completed=row.settled, width=30),
            f"{row.settled}/{row.total}",
            Text(str(failed), style="red" if failed else ""),
        )
    if not snap.rollouts:
        table.add_row("-", "no active rollout", "", "", "", "")
    return table


def _broker(snap: Snapshot) -> Table:
    b = snap.broker
    table = Table("clients", "in/s", "out/s", "dropped 5m", "stored/s", "unacked", "bridges")
    table.title = "Broker and bridges"
    dropped = b.get("dropped")
    table.add_row(
        _fmt(b.get("clients")),
        _fmt(b.get("received")),
        _fmt(b.get("sent")),
        Text(_fmt(dropped), style="red" if dropped else ""),
        _fmt(b.get("stored")),
        _fmt(b.get("in_flight")),
        _fmt(b.get("bridges")),
    )
    return table


def _alerts(snap: Snapshot) -> Table:
    table = Table("alert", "severity", "since", "summary", title="Firing alerts")
    for alert in snap.alerts or []:
        style = "bold red" if alert.severity == "page" else "yellow"
        table.add_row(Text(alert.name, style=style), alert.severity, alert.since, alert.summary)
    if snap.alerts == []:
        table.add_row(Text("none", style="green"), "", "", "")
    elif snap.alerts is None:
        table.add_row(Text("unknown", style="red"), "", "", "Prometheus did not answer")
    return table


def render(snap: Snapshot) -> RenderableType:
    parts: list[RenderableType] = [
        Text(f"Outpost at {snap.at:%Y-%m-%d %H:%M:%S} UTC", style="bold"),
        _fleet(snap),
        _rollouts(snap),
        _broker(snap),
        _alerts(snap),
    ]
    parts += [Text(f"unavailable: {e}", style="red") for e in snap.errors]
    return Group(*parts)


def status(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Redraw until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between redraws")] = 5.0,
) -> None:
    """Fleet, rollouts with progress, broker load and firing alerts (from the api and
    Prometheus; never the database)."""
    try:
        settings = load(StatusSettings)
    except SettingsError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console = Console()
    if not watch:
        snap = fetch(settings)
        console.print(render(snap))
        raise typer.Exit(1 if snap.errors else 0)
    with Live(render(fetch(settings)), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(fetch(settings)), refresh=True)
        except KeyboardInterrupt:
            return
