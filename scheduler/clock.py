"""Time helpers: the injected clock type and UTC normalisation of stored datetimes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]

__all__ = ["Clock", "aware", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """A datetime read from MongoDB through a client without ``tz_aware`` is naive UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
