"""How many devices the next wave takes, and when it may start. Pure.

- fixed: ``size`` devices per wave;
- percentage: ``percent`` of the eligible target counted when the wave starts (rounded
  up, at least one), so devices that joined the target later are included;
- exponential (AWS IoT Jobs): ``base_rate_per_minute * increment_factor**k`` devices per
  minute, where ``k`` is how many times the notified (or succeeded) count has passed a
  multiple of the criterion. Each minute is one wave; there is no success gating.

Nothing ever exceeds ``max_per_minute`` in one minute (:func:`minute_budget`). Group
device commands use the same cap, paced evenly over the minute (:func:`paced_budget`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from schemas.rollouts import (
    ExponentialRate,
    FixedWaves,
    PercentWaves,
    RolloutSpec,
    SuccessCondition,
)

__all__ = [
    "MINUTE",
    "WaveCounts",
    "WaveOutcome",
    "exponential_rate",
    "gated",
    "minute_budget",
    "paced_budget",
    "plan_waves",
    "wave_outcome",
    "wave_size",
]

MINUTE = timedelta(minutes=1)


class WaveOutcome(StrEnum):
    WAIT = "wait"  # not decided yet
    MET = "met"  # the next wave may start
    MISSED = "missed"  # pause or abort, as the rollout says


@dataclass(frozen=True)
class WaveCounts:
    total: int
    succeeded: int
    final: int  # executions in a terminal state (succeeded included)


def exponential_rate(
    plan: ExponentialRate, notified: int, succeeded: int, max_per_minute: int
) -> int:
    """Devices per minute at these counts, capped by ``max_per_minute``."""
    if plan.notified_devices is not None:
        steps = notified // plan.notified_devices
    else:
        steps = succeeded // (plan.succeeded_devices or 1)
    rate = plan.base_rate_per_minute * plan.increment_factor ** min(steps, 64)
    return max(1, min(max_per_minute, math.floor(rate)))


def wave_size(spec: RolloutSpec, eligible_total: int, notified: int = 0, succeeded: int = 0) -> int:
    """Devices the next wave takes (before the per-minute cap)."""
    plan = spec.waves
    if isinstance(plan, FixedWaves):
        return plan.size
    if isinstance(plan, PercentWaves):
        return max(1, math.ceil(eligible_total * plan.percent / 100))
    return exponential_rate(plan, notified, succeeded, spec.max_per_minute)


def minute_budget(
    max_per_minute: int, minute_started_at: datetime | None, sent: int, now: datetime
) -> tuple[datetime, int, int]:
    """(current minute start, already sent in it, still allowed in it)."""
    if minute_started_at is None or now - minute_started_at >= MINUTE:
        return now, 0, max_per_minute
    return minute_started_at, sent, max(0, max_per_minute - sent)


def paced_budget(max_per_minute: int, sent_at: Sequence[datetime], now: datetime) -> int:
    """How many more sends are allowed at ``now``, given the times of every earlier one.

    Two bounds, both on what was recorded: no 60-second window ever holds more than
    ``max_per_minute`` sends, and sends are spread evenly, one every
    ``60 / max_per_minute`` seconds from the first (a caller ticking coarsely sends the
    few that came due since its last tick). A sender that was away catches up only as
    far as the 60-second bound lets it.
    """
    if not sent_at:
        return 1
    in_minute = sum(1 for t in sent_at if now - t < MINUTE)
    first = min(sent_at)
    due = math.floor((now - first).total_seconds() * max_per_minute / 60) + 1
    return max(0, min(max_per_minute - in_minute, due - len(sent_at)))


def wave_outcome(
    condition: SuccessCondition, counts: WaveCounts, started_at: datetime, now: datetime
) -> WaveOutcome:
    """Whether the wave met its success condition (early) or missed it (at the end)."""
    if counts.total == 0:
        return WaveOutcome.MET
    share = 100 * counts.succeeded / counts.total
    if share >= condition.min_success_percent:
        return WaveOutcome.MET
    if counts.final >= counts.total or now - started_at >= condition.wait:
        return WaveOutcome.MISSED
    return WaveOutcome.WAIT


def plan_waves(spec: RolloutSpec, eligible_total: int) -> list[int]:
    """Dry run: wave sizes for ``eligible_total`` devices if every device succeeds."""
    sizes: list[int] = []
    done = 0
    while done < eligible_total and len(sizes) < 10_000:
        size = min(wave_size(spec, eligible_total, done, done), eligible_total - done)
        sizes.append(size)
        done += size
    return sizes


def gated(spec: RolloutSpec) -> bool:
    """Do waves wait for the previous one's success condition?"""
    return isinstance(spec.waves, FixedWaves | PercentWaves)
