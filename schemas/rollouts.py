"""Rollout definitions: the shared core the api stores and the scheduler runs.

A rollout upgrades a target set of devices to one firmware image, wave after wave,
inside its maintenance windows. The api splits these into Create/Update/Public bodies;
this module holds only what both sides must agree on. All models are frozen.

Storage (:mod:`schemas.documents`): the api writes ``rollouts`` (``_id`` = the job id,
matching :data:`schemas.topics.JOB_ID_PATTERN`): the :class:`RolloutSpec` and the admin's
:class:`RolloutControl` (pause, resume, cancel requests). The scheduler writes
``rollout_progress``: the status it acted on and its :class:`RolloutProgress`. Neither
writes the other's document; :func:`rollout_status` is what both read as the status.

Waves (``waves``), one of:

- :class:`FixedWaves`: ``size`` devices per wave;
- :class:`PercentWaves`: ``percent`` of the current eligible target per wave;
- :class:`ExponentialRate`: as AWS IoT Jobs' exponential rollout, a rate of
  ``base_rate_per_minute`` devices per minute, multiplied by ``increment_factor`` each
  time ``notified_devices`` more devices were notified (or ``succeeded_devices`` more
  succeeded) since the last increase. Each minute of sending is one wave.

Every kind is capped by ``max_per_minute``. A wave (fixed/percentage) starts only once
the previous one met ``success``; otherwise the rollout pauses or aborts
(``success.on_miss``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from schemas.topics import DEVICE_ID_PATTERN

__all__ = [
    "AbortCriterion",
    "EndBehavior",
    "ExecutionStatus",
    "ExponentialRate",
    "FailureType",
    "FirmwareTarget",
    "FixedWaves",
    "MaintenanceWindow",
    "MissAction",
    "PercentWaves",
    "RetryPolicy",
    "RolloutControl",
    "RolloutProgress",
    "RolloutSchedule",
    "RolloutSpec",
    "RolloutStatus",
    "SuccessCondition",
    "Target",
    "WavePlan",
    "Weekday",
    "rollout_status",
]

_Frozen = ConfigDict(frozen=True, extra="forbid")
MAX_DEVICES = 1_000_000  # a bound on device counts an admin writes (they reach the database)
# Dates an admin writes: far enough from datetime's limits that adding durations to them
# (schedules, dry runs) never overflows.
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)
Name = Annotated[str, StringConstraints(min_length=1, max_length=64)]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
Percent = Annotated[float, Field(ge=0, le=100)]


class RolloutStatus(StrEnum):
    """Lifecycle of a rollout. ``paused`` and ``canceling`` may be requested by the api."""

    SCHEDULED = "scheduled"  # created, start time not reached yet
    RUNNING = "running"
    PAUSED = "paused"
    CANCELING = "canceling"  # requested; the scheduler cancels what has not started
    COMPLETED = "completed"
    ABORTED = "aborted"
    CANCELED = "canceled"

    @property
    def active(self) -> bool:
        """Still holds its devices (one active rollout per device)."""
        return self in (
            RolloutStatus.SCHEDULED,
            RolloutStatus.RUNNING,
            RolloutStatus.PAUSED,
            RolloutStatus.CANCELING,
        )

    @property
    def final(self) -> bool:
        return not self.active


class ExecutionStatus(StrEnum):
    """One device's execution of a rollout's job, as the scheduler sees it.

    ``in_progress`` lasts until the device is back online on the new version (the
    post-upgrade grace check), not just until it reports ``succeeded``.
    """

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS)


class FailureType(StrEnum):
    """Which failures an abort criterion or a retry policy counts."""

    FAILED = "failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    ALL = "all"

    def matches(self, status: ExecutionStatus) -> bool:
        if self is FailureType.ALL:
            return status in (
                ExecutionStatus.FAILED,
                ExecutionStatus.REJECTED,
                ExecutionStatus.TIMED_OUT,
            )
        return status.value == self.value


class MissAction(StrEnum):
    PAUSE = "pause"
    ABORT = "abort"


class EndBehavior(StrEnum):
    STOP = "stop"  # send nothing more; executions already sent run to their end
    CANCEL = "cancel"  # also cancel executions not started (queued, not sent)


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"

    @property
    def number(self) -> int:
        """Python's ``date.weekday()`` number (Monday = 0)."""
        return list(Weekday).index(self)


class FirmwareTarget(BaseModel):
    """The firmware image to install: the ``firmware`` document's id and its version."""

    model_config = _Frozen

    id: Name
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Target(BaseModel):
    """Which devices: every given criterion must hold (tags: all listed tags)."""

    model_config = _Frozen

    group: Name | None = None
    tags: frozenset[Name] = frozenset()
    device_ids: frozenset[DeviceId] = Field(default=frozenset(), max_length=100_000)
    hardware_model: Name | None = None

    @model_validator(mode="after")
    def _not_everything(self) -> Target:
        if not (self.group or self.tags or self.device_ids or self.hardware_model):
            raise ValueError("a target needs a group, tags, device ids or a hardware model")
        return self


class FixedWaves(BaseModel):
    model_config = _Frozen

    kind: Literal["fixed"]
    size: int = Field(ge=1, le=100_000)


class PercentWaves(BaseModel):
    model_config = _Frozen

    kind: Literal["percentage"]
    percent: float = Field(gt=0, le=100)


class ExponentialRate(BaseModel):
    """AWS IoT Jobs' exponential rollout; exactly one increase criterion is set."""

    model_config = _Frozen

    kind: Literal["exponential"]
    base_rate_per_minute: int = Field(ge=1, le=100_000)
    increment_factor: float = Field(ge=1.1, le=5)
    notified_devices: int | None = Field(default=None, ge=1, le=MAX_DEVICES)
    succeeded_devices: int | None = Field(default=None, ge=1, le=MAX_DEVICES)

    @model_validator(mode="after")
    def _one_criterion(self) -> ExponentialRate:
        if (self.notified_devices is None) == (self.succeeded_devices is None):
            raise ValueError("set exactly one of notified_devices or succeeded_devices")
        return self


# ``kind`` is required: a discriminator with a default would be a default the spec shows
# and the parser ignores.
WavePlan = Annotated[FixedWaves | PercentWaves | ExponentialRate, Field(discriminator="kind")]


class SuccessCondition(BaseModel):
    """When the next wave may start: ``min_success_percent`` of the wave succeeded.

    Evaluated once every execution of the wave is final, or ``wait`` after the wave
    started, whichever comes first; short of it, ``on_miss`` pauses or aborts.
    """

    model_config = _Frozen

    min_success_percent: Percent = 100
    wait: timedelta = Field(
        default=timedelta(hours=1), ge=timedelta(seconds=1), le=timedelta(days=30)
    )
    on_miss: MissAction = MissAction.PAUSE


class AbortCriterion(BaseModel):
    """Abort once, over at least ``min_finished`` finished executions, the share of
    ``failure_type`` exceeds ``threshold_percent``."""

    model_config = _Frozen

    failure_type: FailureType
    threshold_percent: float = Field(gt=0, le=100)
    min_finished: int = Field(default=10, ge=1, le=MAX_DEVICES)


class RetryPolicy(BaseModel):
    """Retry executions that ended in ``failure_type`` up to ``max_retries`` times."""

    model_config = _Frozen

    failure_type: FailureType
    max_retries: int = Field(ge=0, le=10)


class MaintenanceWindow(BaseModel):
    """Recurring local-time window: on ``days``, from ``start`` to ``end`` in ``timezone``.

    ``end <= start`` means the window crosses midnight (it belongs to the day it starts;
    ``end == start`` is a 24-hour window). As in RFC 5545, a local time that does not
    exist (spring forward) is read with the offset before the gap, i.e. moved forward by
    the gap's length; an ambiguous one (fall back) is its first occurrence. See
    :mod:`scheduler.windows`.
    """

    model_config = _Frozen

    days: frozenset[Weekday] = frozenset(Weekday)
    start: time
    end: time
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_+\-/]{1,64}", value):
            raise ValueError(f"not an IANA time zone: {value!r}")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    @field_validator("start", "end")
    @classmethod
    def _naive(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("give a local time without offset; the zone is `timezone`")
        return value

    @field_validator("days")
    @classmethod
    def _some_day(cls, value: frozenset[Weekday]) -> frozenset[Weekday]:
        if not value:
            raise ValueError("a window needs at least one day")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class RolloutSchedule(BaseModel):
    """When commands may be sent: between start and end, inside any window (if any)."""

    model_config = _Frozen

    start_at: AwareDatetime | None = None
    end_at: AwareDatetime | None = None
    end_behavior: EndBehavior = EndBehavior.STOP
    windows: tuple[MaintenanceWindow, ...] = Field(default=(), max_length=32)

    @field_validator("start_at", "end_at")
    @classmethod
    def _plausible(cls, value: datetime | None) -> datetime | None:
        if value is not None and not EARLIEST <= value < LATEST:
            raise ValueError("must be between 2000-01-01 and 2200-01-01 (UTC)")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> RolloutSchedule:
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("end_at must be after start_at")
        return self


class RolloutSpec(BaseModel):
    """What an admin decides: what, to whom, how fast, when, and when to give up."""

    model_config = _Frozen

    firmware: FirmwareTarget
    target: Target
    waves: WavePlan
    success: SuccessCondition = SuccessCondition()
    abort: tuple[AbortCriterion, ...] = Field(default=(), max_length=4)
    retries: tuple[RetryPolicy, ...] = Field(default=(), max_length=4)
    in_progress_timeout: timedelta = Field(
        default=timedelta(minutes=30), ge=timedelta(seconds=1), le=timedelta(days=7)
    )
    grace_period: timedelta = Field(
        default=timedelta(minutes=10), ge=timedelta(0), le=timedelta(days=1)
    )
    max_per_minute: int = Field(default=1000, ge=1, le=100_000)
    allow_downgrade: bool = Field(
        default=False,
        description="Devices on a newer version may install this older one (else they refuse)",
    )
    schedule: RolloutSchedule = RolloutSchedule()

    def to_document(self) -> dict[str, Any]:
        """The spec as BSON-friendly fields: sets as sorted lists, durations in seconds,
        local times as ``HH:MM:SS``; datetimes stay dates. :meth:`model_validate` reads
        them back."""
        doc = self.model_dump(mode="python")
        doc["target"]["tags"] = sorted(self.target.tags)
        doc["target"]["device_ids"] = sorted(self.target.device_ids)
        doc["schedule"]["windows"] = [
            {
                **w,
                "days": sorted(w["days"]),
                "start": w["start"].isoformat(),
                "end": w["end"].isoformat(),
            }
            for w in doc["schedule"]["windows"]
        ]
        for key in ("in_progress_timeout", "grace_period"):
            doc[key] = doc[key].total_seconds()
        doc["success"]["wait"] = doc["success"]["wait"].total_seconds()
        return doc

    def retries_for(self, status: ExecutionStatus) -> int:
        """How many retries a failure of ``status`` gets (the most generous policy)."""
        return max(
            (p.max_retries for p in self.retries if p.failure_type.matches(status)), default=0
        )


class RolloutProgress(BaseModel):
    """Scheduler-owned progress of a rollout (``rollout_progress.progress``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    wave: int = Field(default=0, ge=0, description="Number of the current wave (0 = none yet)")
    wave_started_at: datetime | None = None
    rate_per_minute: float | None = Field(default=None, description="Exponential: current rate")
    rate_base_count: int = Field(default=0, description="Exponential: count at last increase")
    minute_started_at: datetime | None = None
    sent_this_minute: int = 0
    reason: str | None = Field(default=None, description="Why paused/aborted/finished")
    accepted_wave: int = Field(default=0, description="A missed wave the admin resumed past")
    fence: int = Field(default=0, description="Lease token of the last writer")
    open_executions: int = Field(
        default=0,
        ge=0,
        description="Commands sent whose execution is not final yet. An aborted or "
        "canceled rollout is still followed until this is 0, so the devices "
        "that were upgrading when it stopped end succeeded, failed or timed out",
    )


class RolloutControl(BaseModel):
    """What an admin last asked of a rollout (api-owned, ``rollouts.control``).

    ``rev`` is new on every request, so the scheduler can tell a resume that came after
    its own pause (a wave that missed its success condition) from the request it already
    answered (``rollout_progress.control_rev``).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    status: Literal["running", "paused", "canceled"] = "running"
    rev: str = ""
    at: datetime | None = None


def rollout_status(
    spec: RolloutSpec,
    control: RolloutControl,
    progress_status: RolloutStatus | None,
    control_rev: str | None,
    now: datetime,
) -> RolloutStatus:
    """The one status of a rollout, from the admin's control and the scheduler's progress.

    A final status the scheduler wrote wins; then the admin's cancel (``canceling`` until
    the scheduler has canceled) and pause; a pause the scheduler decided itself holds
    until the admin sends a newer request; otherwise what the scheduler last wrote, or,
    before its first tick, ``scheduled``/``running`` by the start time.
    """
    if progress_status is not None and progress_status.final:
        return progress_status
    if control.status == "canceled":
        return RolloutStatus.CANCELING
    if control.status == "paused":
        return RolloutStatus.PAUSED
    if progress_status is RolloutStatus.PAUSED and control_rev == control.rev:
        return RolloutStatus.PAUSED
    if spec.schedule.start_at is not None and spec.schedule.start_at > now:
        return RolloutStatus.SCHEDULED
    return RolloutStatus.RUNNING
