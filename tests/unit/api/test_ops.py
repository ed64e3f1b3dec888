from datetime import UTC, datetime, timedelta

from api.routes.ops import summarize

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def snap(minutes_ago: float, **values: float) -> dict:
    return {
        "at": NOW - timedelta(minutes=minutes_ago),
        "values": {k.replace("_", "/"): v for k, v in values.items()},
    }


def test_no_snapshot_says_why() -> None:
    summary = summarize(None, None, NOW)
    assert summary.values == {}
    assert summary.alerts == ["no broker metrics yet: is `outpost scheduler` running?"]


def test_dropped_over_the_window() -> None:
    latest = snap(1, publish_messages_dropped=15)
    summary = summarize(latest, snap(61, publish_messages_dropped=5), NOW)
    assert summary.dropped_in_window == 10
    assert summary.alerts == ["the broker dropped 10 messages in the last hour"]


def test_nothing_dropped_no_alert() -> None:
    summary = summarize(
        snap(1, publish_messages_dropped=5), snap(61, publish_messages_dropped=5), NOW
    )
    assert (summary.dropped_in_window, summary.alerts) == (0, [])


def test_restart_resets_the_counter() -> None:
    summary = summarize(
        snap(1, publish_messages_dropped=3), snap(61, publish_messages_dropped=50), NOW
    )
    assert summary.dropped_in_window == 3


def test_stale_metrics_are_flagged() -> None:
    summary = summarize(snap(30, clients_connected=4), None, NOW)
    assert summary.dropped_in_window is None
    assert summary.alerts == ["metrics are 1800 s old"]
    assert summary.values == {"clients/connected": 4.0}
