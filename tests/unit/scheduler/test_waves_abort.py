"""Wave sizes, per-minute cap, success condition and abort criteria (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from scheduler.abort import abort_reason
from schemas.rollouts import (
    AbortCriterion,
    ExecutionStatus,
    ExponentialRate,
    FailureType,
    RolloutSpec,
    SuccessCondition,
)
from schemas.waves import (
    WaveCounts,
    WaveOutcome,
    exponential_rate,
    minute_budget,
    plan_waves,
    wave_outcome,
    wave_size,
)

S = ExecutionStatus
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(waves: dict, **kw) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {"firmware": {"id": "fw", "version": "2"}, "target": {"group": "g"}, "waves": waves, **kw}
    )


def test_fixed_and_percentage_sizes():
    assert wave_size(spec({"kind": "fixed", "size": 25}), 1000) == 25
    assert wave_size(spec({"kind": "percentage", "percent": 10}), 205) == 21
    assert wave_size(spec({"kind": "percentage", "percent": 1}), 3) == 1


def test_percentage_plan_covers_everyone_once():
    sizes = plan_waves(spec({"kind": "percentage", "percent": 30}), 200)
    assert sizes == [60, 60, 60, 20]


def test_exponential_rate_grows_by_factor_per_criterion_and_is_capped():
    plan = ExponentialRate(
        kind="exponential", base_rate_per_minute=10, increment_factor=2, notified_devices=50
    )
    assert exponential_rate(plan, 0, 0, 1000) == 10
    assert exponential_rate(plan, 49, 0, 1000) == 10
    assert exponential_rate(plan, 50, 0, 1000) == 20
    assert exponential_rate(plan, 150, 0, 1000) == 80
    assert exponential_rate(plan, 10**6, 0, 1000) == 1000


def test_exponential_on_succeeded_counts_successes_only():
    plan = ExponentialRate(
        kind="exponential", base_rate_per_minute=3, increment_factor=1.5, succeeded_devices=10
    )
    assert exponential_rate(plan, 500, 9, 100) == 3
    assert exponential_rate(plan, 500, 20, 100) == 6  # 3 * 1.5**2 = 6.75 -> 6


def test_exponential_needs_exactly_one_criterion():
    with pytest.raises(ValidationError, match="exactly one"):
        ExponentialRate(kind="exponential", base_rate_per_minute=1, increment_factor=2)
    with pytest.raises(ValidationError, match="exactly one"):
        ExponentialRate(
            kind="exponential",
            base_rate_per_minute=1,
            increment_factor=2,
            notified_devices=1,
            succeeded_devices=1,
        )


def test_minute_budget_never_exceeds_max_per_minute():
    start, sent, left = minute_budget(100, None, 0, T0)
    assert (start, sent, left) == (T0, 0, 100)
    assert minute_budget(100, T0, 70, T0 + timedelta(seconds=30)) == (T0, 70, 30)
    assert minute_budget(100, T0, 150, T0 + timedelta(seconds=30))[2] == 0
    later = T0 + timedelta(seconds=60)
    assert minute_budget(100, T0, 100, later) == (later, 0, 100)


def test_wave_outcome_early_met_wait_and_missed():
    cond = SuccessCondition(min_success_percent=80, wait=timedelta(minutes=10))
    assert wave_outcome(cond, WaveCounts(10, 8, 8), T0, T0) is WaveOutcome.MET
    assert wave_outcome(cond, WaveCounts(10, 5, 6), T0, T0) is WaveOutcome.WAIT
    assert wave_outcome(cond, WaveCounts(10, 7, 10), T0, T0) is WaveOutcome.MISSED
    late = T0 + timedelta(minutes=10)
    assert wave_outcome(cond, WaveCounts(10, 5, 6), T0, late) is WaveOutcome.MISSED


def test_abort_needs_min_finished_and_share_above_threshold():
    crit = (AbortCriterion(failure_type=FailureType.FAILED, threshold_percent=20, min_finished=10),)
    assert abort_reason(crit, {S.FAILED: 5, S.SUCCEEDED: 4}) is None  # only 9 finished
    assert abort_reason(crit, {S.FAILED: 2, S.SUCCEEDED: 8}) is None  # 20% is not > 20%
    reason = abort_reason(crit, {S.FAILED: 3, S.SUCCEEDED: 7, S.QUEUED: 100})
    assert reason is not None
    assert "30.0% of 10" in reason


def test_abort_by_type_counts_only_that_type_and_all_counts_every_failure():
    counts = {S.REJECTED: 3, S.TIMED_OUT: 3, S.SUCCEEDED: 4, S.CANCELED: 50}
    only_failed = (
        AbortCriterion(failure_type=FailureType.FAILED, threshold_percent=10, min_finished=1),
    )
    everything = (
        AbortCriterion(failure_type=FailureType.ALL, threshold_percent=50, min_finished=1),
    )
    assert abort_reason(only_failed, counts) is None
    assert abort_reason(everything, counts) is not None  # 60% of 10 (canceled not counted)
