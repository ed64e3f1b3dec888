"""The shared rollout definition (schemas/rollouts.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas.rollouts import (
    ExecutionStatus,
    FailureType,
    RolloutSchedule,
    RolloutSpec,
    RolloutStatus,
    Target,
)

BASE = {
    "firmware": {"id": "fw", "version": "2"},
    "target": {"group": "g"},
    "waves": {"kind": "fixed", "size": 5},
}


def test_a_target_must_narrow_something():
    with pytest.raises(ValidationError, match="a target needs"):
        Target()
    assert Target(tags=frozenset({"ap"})).tags == {"ap"}


def test_unknown_fields_and_wave_kinds_are_rejected():
    with pytest.raises(ValidationError):
        RolloutSpec.model_validate({**BASE, "surprise": 1})
    with pytest.raises(ValidationError):
        RolloutSpec.model_validate({**BASE, "waves": {"kind": "sideways"}})


def test_end_must_follow_start():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationError, match="end_at must be after start_at"):
        RolloutSchedule(start_at=t, end_at=t)


def test_durations_read_back_from_seconds_as_the_api_stores_them():
    spec = RolloutSpec.model_validate(
        {**BASE, "in_progress_timeout": 90.0, "success": {"wait": 600}}
    )
    assert spec.in_progress_timeout.total_seconds() == 90
    assert spec.success.wait.total_seconds() == 600


def test_retries_for_takes_the_most_generous_matching_policy():
    spec = RolloutSpec.model_validate(
        {
            **BASE,
            "retries": [
                {"failure_type": "all", "max_retries": 1},
                {"failure_type": "timed_out", "max_retries": 3},
            ],
        }
    )
    assert spec.retries_for(ExecutionStatus.TIMED_OUT) == 3
    assert spec.retries_for(ExecutionStatus.REJECTED) == 1
    assert spec.retries_for(ExecutionStatus.SUCCEEDED) == 0


def test_status_helpers():
    assert FailureType.ALL.matches(ExecutionStatus.TIMED_OUT)
    assert not FailureType.ALL.matches(ExecutionStatus.CANCELED)
    assert RolloutStatus.PAUSED.active
    assert RolloutStatus.ABORTED.final
    assert not ExecutionStatus.IN_PROGRESS.terminal
