"""Dry-run of wave plans: which devices would be in which wave. Pure.

Fixed and percentage plans cut the ordered target into waves; the exponential plan
sends ``rate`` devices per minute (one wave per minute), raising the rate by its factor
each time its notified-count threshold is passed (assuming every device is notified, an
upper bound: the scheduler decides at run time).
"""

from __future__ import annotations

import math

from schemas.rollouts import ExponentialRate, FixedWaves, PercentWaves

WavePlan = FixedWaves | PercentWaves | ExponentialRate
MAX_WAVES = 1000


def split(device_ids: list[str], plan: WavePlan, max_per_minute: int) -> list[list[str]]:
    if isinstance(plan, FixedWaves):
        return _chunks(device_ids, plan.size)
    if isinstance(plan, PercentWaves):
        return _chunks(device_ids, max(1, math.ceil(len(device_ids) * plan.percent / 100)))
    return _exponential(device_ids, plan, max_per_minute)


def _chunks(ids: list[str], size: int) -> list[list[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)][:MAX_WAVES]


def _exponential(ids: list[str], plan: ExponentialRate, cap: int) -> list[list[str]]:
    waves: list[list[str]] = []
    rate, since_raise, start = float(plan.base_rate_per_minute), 0, 0
    step = plan.notified_devices or plan.succeeded_devices or 1
    while start < len(ids) and len(waves) < MAX_WAVES:
        size = max(1, min(int(rate), cap))
        waves.append(ids[start:start + size])
        start += size
        since_raise += size
        while since_raise >= step:
            rate *= plan.increment_factor
            since_raise -= step
    return waves
