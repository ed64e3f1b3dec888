"""What the simulator shows while it runs and prints at the end (rich), plus memory."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

from rich.table import Table

from device.sim.fleet import Fleet

__all__ = ["Summary", "live_table", "rss_mb", "summarize"]


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB, from /proc."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        with open(f"/proc/{os.getpid()}/status") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in values:
                    values[name] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


@dataclass(frozen=True)
class Summary:
    devices: int
    connected: int
    ready: int  # connected and presence, state and subscriptions done
    connect_s: float | None  # until every device had its CONNACK
    connects_per_s: float | None
    runtime_s: float
    connects: int
    connect_failures: int
    messages_sent: int
    messages_received: int
    abrupt_drops: int
    graceful_drops: int
    jobs_succeeded: int
    jobs_failed: int
    rss_mib: float
    peak_rss_mib: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(fleet: Fleet) -> Summary:
    stats = fleet.stats
    rss, peak = rss_mb()
    connect = stats.all_connected_after
    return Summary(
        devices=len(fleet.ids),
        connected=stats.connected,
        ready=stats.ready,
        connect_s=connect,
        connects_per_s=len(fleet.ids) / connect if connect else None,
        runtime_s=time.monotonic() - stats.started_at,
        connects=stats.connects,
        connect_failures=stats.connect_failures,
        messages_sent=stats.sent,
        messages_received=stats.received,
        abrupt_drops=stats.abrupt_drops,
        graceful_drops=stats.graceful_drops,
        jobs_succeeded=stats.jobs_succeeded,
        jobs_failed=stats.jobs_failed,
        rss_mib=round(rss, 1),
        peak_rss_mib=round(peak, 1),
    )


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def live_table(fleet: Fleet, title: str = "outpost sim") -> Table:
    summary = summarize(fleet)
    table = Table(title=title, show_header=False, min_width=40)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for name, value in summary.as_dict().items():
        table.add_row(name.replace("_", " "), _fmt(value))
    return table
