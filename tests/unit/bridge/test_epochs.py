"""Broker epochs: when stored presence stops being vouched for (pure parts)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from bridge.epochs import EpochRecorder, started_from_uptime
from schemas.documents import DevicePresenceDoc, PresenceDoc, presence_status

T0 = datetime(2026, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)


def _status(status: str, since: datetime) -> DevicePresenceDoc:
    presence = PresenceDoc(status=status, since=since, k="0")  # type: ignore[arg-type]
    return DevicePresenceDoc(id="d1", presence=presence)


def test_uptime_gives_the_start_rounded_down():
    assert started_from_uptime(T0, b"10 seconds") == datetime(2026, 1, 1, 11, 59, 49, tzinfo=UTC)
    assert started_from_uptime(T0, b"garbage") is None


def test_online_before_the_latest_epoch_is_unknown_offline_stays():
    epoch = T0
    assert presence_status(_status("online", T0 - timedelta(seconds=1)), epoch) == "unknown"
    assert presence_status(_status("online", T0 + timedelta(seconds=1)), epoch) == "online"
    assert presence_status(_status("offline", T0 - timedelta(seconds=1)), epoch) == "offline"
    assert presence_status(_status("online", T0), None) == "online"
    assert presence_status(None, epoch) is None
    assert presence_status(DevicePresenceDoc(id="d1"), epoch) is None


def test_only_a_reconnect_without_its_session_is_an_epoch_at_the_loss():
    recorder = EpochRecorder(
        None,  # type: ignore[arg-type]
        "0",
        logging.getLogger("t"),
        session_expiry_s=60,
    )
    soon = T0 + timedelta(seconds=5)
    recorder.connected(False, 1, T0, soon)  # first connect of a process: no session yet
    recorder.connected(True, 2, T0, soon)  # session kept: the broker remembers us
    recorder.connected(False, 3, T0, T0 + timedelta(minutes=2))  # away past its expiry
    assert recorder._pending == []
    recorder.connected(False, 4, T0, soon)
    assert [e.started_at for e in recorder._pending] == [T0.replace(microsecond=250_000)]
