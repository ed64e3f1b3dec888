"""Maintenance windows and start/end times, DST included (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from scheduler.windows import allowed, next_open, open_until
from schemas.rollouts import MaintenanceWindow, RolloutSchedule, Weekday

BERLIN = "Europe/Berlin"


def window(start: str, end: str, days=None, tz: str = BERLIN) -> MaintenanceWindow:
    return MaintenanceWindow(
        days=frozenset(days or Weekday),
        start=time.fromisoformat(start),
        end=time.fromisoformat(end),
        timezone=tz,
    )


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_no_windows_means_always_open_until_the_end_time():
    schedule = RolloutSchedule(end_at=utc(2026, 1, 2))
    assert open_until(schedule, utc(2026, 1, 1)) == utc(2026, 1, 2)
    assert not allowed(schedule, utc(2026, 1, 2))
    assert next_open(schedule, utc(2026, 1, 3)) is None


def test_before_start_time_is_closed_and_opens_at_start():
    schedule = RolloutSchedule(start_at=utc(2026, 1, 2))
    assert not allowed(schedule, utc(2026, 1, 1))
    assert next_open(schedule, utc(2026, 1, 1)) == utc(2026, 1, 2)


def test_window_in_winter_uses_utc_plus_one():
    schedule = RolloutSchedule(windows=(window("02:00", "04:00"),))
    assert not allowed(schedule, utc(2026, 1, 15, 0, 59))
    assert open_until(schedule, utc(2026, 1, 15, 1, 0)) == utc(2026, 1, 15, 3, 0)
    assert not allowed(schedule, utc(2026, 1, 15, 3, 0))


def test_window_in_summer_uses_utc_plus_two():
    schedule = RolloutSchedule(windows=(window("02:00", "04:00"),))
    assert allowed(schedule, utc(2026, 7, 15, 0, 0))
    assert not allowed(schedule, utc(2026, 7, 15, 2, 0))


def test_spring_forward_start_inside_the_gap_moves_forward_by_the_gap():
    # 2026-03-29: Berlin clocks jump from 02:00 to 03:00 (01:00 UTC).
    schedule = RolloutSchedule(windows=(window("02:30", "05:00"),))
    assert not allowed(schedule, utc(2026, 3, 29, 1, 0))  # 03:00 CEST, before 03:30
    assert allowed(schedule, utc(2026, 3, 29, 1, 30))  # 03:30 CEST
    assert open_until(schedule, utc(2026, 3, 29, 2, 0)) == utc(2026, 3, 29, 3, 0)


def test_fall_back_window_is_one_hour_longer_in_utc():
    # 2026-10-25: Berlin clocks go from 03:00 CEST back to 02:00 CET (01:00 UTC).
    schedule = RolloutSchedule(windows=(window("01:00", "05:00"),))
    assert next_open(schedule, utc(2026, 10, 24, 22, 0)) == utc(2026, 10, 24, 23, 0)
    assert open_until(schedule, utc(2026, 10, 24, 23, 0)) == utc(2026, 10, 25, 4, 0)


def test_window_crossing_midnight_belongs_to_its_start_day():
    schedule = RolloutSchedule(windows=(window("22:00", "04:00", {Weekday.MON}, "UTC"),))
    # 2026-01-05 is a Monday
    assert allowed(schedule, utc(2026, 1, 5, 23, 0))
    assert allowed(schedule, utc(2026, 1, 6, 3, 59))
    assert not allowed(schedule, utc(2026, 1, 6, 22, 30))  # Tuesday night: not listed
    assert next_open(schedule, utc(2026, 1, 6, 5, 0)) == utc(2026, 1, 12, 22, 0)


def test_end_time_caps_the_window_end():
    schedule = RolloutSchedule(
        end_at=utc(2026, 1, 5, 2, 0), windows=(window("00:00", "04:00", tz="UTC"),)
    )
    assert open_until(schedule, utc(2026, 1, 5, 1, 0)) == utc(2026, 1, 5, 2, 0)
    assert next_open(schedule, utc(2026, 1, 5, 3, 0)) is None


def test_days_are_local_days_of_the_zone():
    # Monday 00:30 in Tokyo is Sunday 15:30 UTC.
    schedule = RolloutSchedule(windows=(window("00:00", "01:00", {Weekday.MON}, "Asia/Tokyo"),))
    assert allowed(schedule, utc(2026, 1, 4, 15, 30))
    assert not allowed(schedule, utc(2026, 1, 5, 15, 30))


@pytest.mark.parametrize("zone", ["Mars/Base", "../etc/passwd", ""])
def test_unknown_zone_is_rejected(zone):
    with pytest.raises(ValueError, match="zone"):
        window("01:00", "02:00", tz=zone)


def test_next_open_is_now_inside_a_window():
    schedule = RolloutSchedule(windows=(window("00:00", "00:00", tz="UTC"),))
    now = utc(2026, 5, 1, 12)
    assert next_open(schedule, now) == now
    assert open_until(schedule, now) == now.replace(hour=0) + timedelta(days=1)
