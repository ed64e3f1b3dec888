"""``/ops/broker``: what the broker reports about itself, for operators of the platform.

The numbers come from the snapshots the scheduler takes of Mosquitto's ``$SYS`` topics.
The broker is shared by every tenant and the summary holds no tenant's data, so it is
the same for every tenant's admins (and for them only).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from api.deps import Admin, Db
from api.store import broker_metrics
from api.store.base import Doc

router = APIRouter(tags=["ops"])
DROPPED = "publish/messages/dropped"
WINDOW = timedelta(hours=1)
STALE = timedelta(minutes=5)


class BrokerSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime | None
    age_seconds: float | None
    values: dict[str, float]
    dropped_in_window: float | None
    window_seconds: float
    alerts: list[str]


def summarize(latest: Doc | None, earlier: Doc | None, now: datetime) -> BrokerSummary:
    """The latest snapshot, how many messages the broker dropped over ``WINDOW``, alerts."""
    if latest is None:
        return BrokerSummary(
            at=None,
            age_seconds=None,
            values={},
            dropped_in_window=None,
            window_seconds=WINDOW.total_seconds(),
            alerts=["no broker metrics yet: is `outpost scheduler` running?"],
        )
    at = _aware(latest["at"])
    values = {k: float(v) for k, v in latest.get("values", {}).items()}
    alerts = []
    if now - at > STALE:
        alerts.append(f"metrics are {int((now - at).total_seconds())} s old")
    dropped = None
    if earlier is not None and DROPPED in values:
        before = float(earlier.get("values", {}).get(DROPPED, 0.0))
        # a broker restart resets its counters; the current value is then the increase
        dropped = values[DROPPED] - before if values[DROPPED] >= before else values[DROPPED]
        if dropped > 0:
            alerts.append(f"the broker dropped {dropped:.0f} messages in the last hour")
    return BrokerSummary(
        at=at,
        age_seconds=(now - at).total_seconds(),
        values=values,
        dropped_in_window=dropped,
        window_seconds=WINDOW.total_seconds(),
        alerts=alerts,
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@router.get("/ops/broker")
async def broker(db: Db, who: Admin) -> BrokerSummary:
    """Latest broker metrics, messages dropped in the last hour, and alerts."""
    now = datetime.now(UTC)
    latest = await broker_metrics.latest(db)
    earlier = None
    if latest is not None:
        earlier = await broker_metrics.at_or_before(db, _aware(latest["at"]) - WINDOW)
    return summarize(latest, earlier, now)
