"""Config reconcile decisions and $SYS parsing (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest

from scheduler.broker_metrics import BrokerMetrics, broker_started, parse_value
from scheduler.reconcile import ReconcilePolicy, decide
from scheduler.service import firing_slot

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
POLICY = ReconcilePolicy(lag=timedelta(minutes=5), retry_after=timedelta(minutes=1), max_attempts=3)


def device(applied=1, desired=2, online=True, since=T0 - timedelta(hours=1)):
    return {
        "_id": "d1",
        "desired_config": {"version": desired, "updated_at": T0},
        "state": {"config": {"version": applied, "status": "applied"}},
        "presence": {"status": "online" if online else "offline", "since": since},
    }


def test_in_sync_or_rejected_or_no_desired_config_is_left_alone():
    assert decide(device(applied=2), None, POLICY, T0 + timedelta(hours=1)) is None
    rejected = device(applied=2)
    rejected["state"]["config"]["status"] = "rejected"
    assert decide(rejected, None, POLICY, T0 + timedelta(hours=1)) is None
    assert decide({"_id": "d1"}, None, POLICY, T0) is None


def test_lagging_longer_than_lag_is_republished_with_backoff_and_a_cap():
    assert decide(device(), None, POLICY, T0 + timedelta(minutes=4)) is None
    assert decide(device(), None, POLICY, T0 + timedelta(minutes=5)) == "lagging"
    rec = {"version": 2, "attempts": 1, "last_at": T0 + timedelta(minutes=5)}
    assert decide(device(), rec, POLICY, T0 + timedelta(minutes=6)) is None  # 2 min wait
    assert decide(device(), rec, POLICY, T0 + timedelta(minutes=7)) == "lagging"
    capped = {**rec, "attempts": 3}
    assert decide(device(), capped, POLICY, T0 + timedelta(days=1)) is None


def test_attempts_of_an_older_version_do_not_count():
    rec = {"version": 1, "attempts": 3, "last_at": T0}
    assert decide(device(), rec, POLICY, T0 + timedelta(minutes=5)) == "lagging"


def test_a_reconnect_after_the_last_attempt_republishes_at_once():
    rec = {"version": 2, "attempts": 1, "last_at": T0 + timedelta(minutes=5)}
    back = device(since=T0 + timedelta(minutes=5, seconds=10))
    assert decide(back, rec, POLICY, T0 + timedelta(minutes=5, seconds=20)) == "reconnected"
    assert (
        decide(
            device(online=False, since=back["presence"]["since"]),
            rec,
            POLICY,
            T0 + timedelta(minutes=5, seconds=20),
        )
        is None
    )


def test_sys_values_become_gauges_including_the_topic_with_a_space():
    registry = CollectorRegistry()
    metrics = BrokerMetrics(registry)
    assert metrics.observe("$SYS/broker/retained messages/count", b"42")
    assert metrics.observe("$SYS/broker/clients/connected", b"7")
    assert metrics.observe("$SYS/broker/load/messages/received/1min", b"12.5")
    assert metrics.observe("$SYS/broker/uptime", b"93 seconds")
    assert not metrics.observe("$SYS/broker/version", b"mosquitto version 2.0.11")
    assert not metrics.observe("$SYS/broker/unknown/thing", b"1")
    text = generate_latest(registry).decode()
    assert "outpost_broker_retained_messages 42.0" in text
    assert "outpost_broker_clients_connected 7.0" in text
    assert 'outpost_broker_load{what="messages/received",window="1min"} 12.5' in text
    assert "outpost_broker_sys_ignored_total 1.0" in text
    snap = metrics.snapshot(T0)
    assert snap["values"]["retained messages/count"] == 42


def test_parse_value_and_broker_start_and_firing_slot():
    assert parse_value(b"0.53") == 0.53
    assert parse_value(b"\xff") is None
    assert broker_started(T0, 125) == datetime(2026, 1, 1, 11, 57, 54, tzinfo=UTC)
    assert broker_started(T0 + timedelta(seconds=1), 126) == broker_started(T0, 125)
    assert firing_slot(T0 + timedelta(seconds=59), 60) == firing_slot(T0, 60)
    assert firing_slot(T0 + timedelta(seconds=60), 60) == T0 + timedelta(seconds=60)
