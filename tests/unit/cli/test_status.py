"""``outpost status`` drawing (pure): fleet, rollouts with progress bars, broker, alerts."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from cli.status import Alert, RolloutRow, Snapshot, StatusSettings, fetch, render


def _text(snap: Snapshot) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(render(snap))
    return console.export_text()


def test_fleet_rollouts_broker_and_alerts_are_drawn():
    snap = Snapshot(
        datetime(2026, 1, 1, tzinfo=UTC),
        devices={"acme": {"online": 90, "offline": 7, "unknown": 3, "never": 0}},
        out_of_sync={"acme": 4},
        broker={"clients": 103, "received": 2.5, "sent": 3, "dropped": 0, "bridges": 2},
        rollouts=[RolloutRow("r" * 24, "running", 2, {"succeeded": 30, "queued": 10})],
        alerts=[Alert("OutpostBridgeLagHigh", "page", "5% of device messages…", "2026-01-01")],
    )
    text = _text(snap)
    for expected in ("acme", "90", "7", "running", "30/40", "━", "2.5", "OutpostBridgeLagHigh"):
        assert expected in text
    assert "unavailable" not in text


def test_an_unreachable_source_is_named_and_alerts_are_unknown():
    settings = StatusSettings(
        api_url="http://127.0.0.1:9", prometheus_url="http://127.0.0.1:9", token="t", timeout_s=1
    )
    snap = fetch(settings)
    text = _text(snap)
    assert "unavailable: prometheus (http://127.0.0.1:9)" in text
    assert "unavailable: api (http://127.0.0.1:9)" in text
    assert "Prometheus did not answer" in text
