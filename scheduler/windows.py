"""When a rollout may send: start/end times and recurring maintenance windows. Pure.

Every function takes ``now`` (an aware datetime) instead of reading a clock. A window is
evaluated in its own IANA zone with :mod:`zoneinfo`, one local day at a time, so a DST
change moves the UTC instants of the window, never its local hours:

- a local time inside the spring-forward gap is read with the offset before the gap
  (RFC 5545; Python's ``fold=0``), i.e. 02:30 on that day becomes 03:30 local;
- a local time that occurs twice (fall back) is its first occurrence (``fold=0``).

A window whose end is not after its start crosses midnight and belongs to the day it
starts (``22:00-04:00`` on ``mon`` runs Monday 22:00 to Tuesday 04:00 local).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta

from schemas.rollouts import MaintenanceWindow, RolloutSchedule

__all__ = ["Occurrence", "allowed", "next_open", "occurrences", "open_until"]

Occurrence = tuple[datetime, datetime]


def _at(day: date, window: MaintenanceWindow, *, end: bool) -> datetime:
    clock = window.end if end else window.start
    if end and window.end <= window.start:
        day += timedelta(days=1)
    local = datetime.combine(day, clock, tzinfo=window.zone)  # fold=0: RFC 5545
    return local.astimezone(UTC)


def occurrences(window: MaintenanceWindow, first: date, days: int) -> Iterator[Occurrence]:
    """UTC (start, end) of the window on each local day from ``first`` on."""
    for offset in range(days):
        day = first + timedelta(days=offset)
        if any(d.number == day.weekday() for d in window.days):
            yield _at(day, window, end=False), _at(day, window, end=True)


def _around(window: MaintenanceWindow, now: datetime, days: int) -> Iterator[Occurrence]:
    today = now.astimezone(window.zone).date()
    return occurrences(window, today - timedelta(days=1), days + 1)


def _window_end(windows: Sequence[MaintenanceWindow], now: datetime) -> datetime | None:
    ends = [end for w in windows for start, end in _around(w, now, 1) if start <= now < end]
    return max(ends, default=None)


def allowed(schedule: RolloutSchedule, now: datetime) -> bool:
    """May the rollout send commands at ``now``?"""
    return open_until(schedule, now) is not None


def open_until(schedule: RolloutSchedule, now: datetime) -> datetime | None:
    """The instant sending must stop (a URL must not outlive it); None if closed now.

    ``datetime.max`` (UTC) stands for "no limit" (no end time and no windows).
    """
    if schedule.start_at and now < schedule.start_at:
        return None
    if schedule.end_at and now >= schedule.end_at:
        return None
    limit = schedule.end_at or datetime.max.replace(tzinfo=UTC)
    if not schedule.windows:
        return limit
    window_end = _window_end(schedule.windows, now)
    return None if window_end is None else min(limit, window_end)


def next_open(schedule: RolloutSchedule, now: datetime) -> datetime | None:
    """When sending is next allowed (``now`` if it is); None if never again."""
    if open_until(schedule, now) is not None:
        return now
    after = max(now, schedule.start_at) if schedule.start_at else now
    if not schedule.windows:
        candidate: datetime | None = after
    else:
        starts = [s for w in schedule.windows for s, e in _around(w, after, 8) if e > after]
        candidate = max(min(starts), after) if starts else None
    if candidate is None or (schedule.end_at and candidate >= schedule.end_at):
        return None
    return candidate
