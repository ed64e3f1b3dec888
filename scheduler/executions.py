"""State of one device's execution, decided from what the bridge recorded. Pure.

    queued ──device reported succeeded──► in_progress ──back online on the new version
      ▲  │                                       │       within the grace period──► succeeded
      │  ├─failed / rejected report──► failed / rejected
      │  └─no final report within in_progress_timeout of sent_at──► timed_out
      │                                          └─not back in time──► failed
      └── retry (attempt + 1, fresh URL) while the failure type has retries left

While the device reports progress (downloading, installing, rebooting) the stored status
stays ``queued``; the device's progress is the bridge's ``job_reports`` document of the
same id, joined here (:meth:`ExecutionView.of`).

The in-progress timeout runs from ``sent_at``: a device that got the command and never
answered times out too. A report belongs to the current attempt only if its ordering key
is newer than ``stale_k`` (the key of the last report seen when the previous attempt was
retried), since status messages carry the job id but not the attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from scheduler.clock import aware
from schemas.documents import JobExecutionDoc, JobReportDoc
from schemas.protocol import JobState
from schemas.rollouts import ExecutionStatus, RolloutSpec

__all__ = ["DeviceView", "ExecutionView", "Transition", "backoff", "decide", "retry_or_final"]

_REPORT_TO_FINAL = {
    JobState.FAILED: ExecutionStatus.FAILED,
    JobState.REJECTED: ExecutionStatus.REJECTED,
}


@dataclass(frozen=True)
class Report:
    status: JobState
    k: str
    updated_at: datetime
    reason: str | None = None


@dataclass(frozen=True)
class ExecutionView:
    id: str
    status: ExecutionStatus
    attempt: int
    sent_at: datetime | None
    report: Report | None
    stale_k: str = ""

    @classmethod
    def of(cls, execution: JobExecutionDoc, report: JobReportDoc | None) -> ExecutionView:
        seen = None
        if report is not None and report.status in JobState.__members__.values():
            seen = Report(
                JobState(report.status), report.k, aware(report.updated_at), report.reason
            )
        sent = execution.sent_at
        return cls(
            execution.id,
            execution.status,
            execution.attempt,
            aware(sent) if sent else None,
            seen,
            execution.stale_k,
        )

    @property
    def current_report(self) -> Report | None:
        """The report, if it belongs to the current attempt."""
        if self.report is None or self.report.k <= self.stale_k:
            return None
        return self.report

    @property
    def needs_device(self) -> bool:
        """Whether :func:`decide` reads the device (the health gate after a success)."""
        report = self.current_report
        return (
            not self.status.terminal
            and self.sent_at is not None
            and report is not None
            and report.status is JobState.SUCCEEDED
        )


@dataclass(frozen=True)
class DeviceView:
    online: bool
    firmware: str | None


@dataclass(frozen=True)
class Transition:
    status: ExecutionStatus
    reason: str
    retry: bool = False  # back to queued with attempt + 1

    @property
    def final(self) -> bool:
        return self.status.terminal and not self.retry


def _grace(
    spec: RolloutSpec, report: Report, device: DeviceView | None, now: datetime
) -> Transition | None:
    if device and device.online and device.firmware == spec.firmware.version:
        return Transition(ExecutionStatus.SUCCEEDED, "back online on the new version")
    if now - report.updated_at > spec.grace_period:
        return Transition(
            ExecutionStatus.FAILED, f"not back online on the new version within {spec.grace_period}"
        )
    return None


def _raw(
    spec: RolloutSpec, ex: ExecutionView, device: DeviceView | None, now: datetime
) -> Transition | None:
    if ex.status.terminal or ex.sent_at is None:
        return None
    report = ex.current_report
    if report is not None and report.status is JobState.SUCCEEDED:
        verdict = _grace(spec, report, device, now)
        if verdict is None and ex.status is ExecutionStatus.QUEUED:
            return Transition(ExecutionStatus.IN_PROGRESS, "verifying the new version")
        return verdict
    if report is not None and report.status in _REPORT_TO_FINAL:
        return Transition(_REPORT_TO_FINAL[report.status], report.reason or "device reported")
    if now - ex.sent_at > spec.in_progress_timeout:
        return Transition(ExecutionStatus.TIMED_OUT, f"no result within {spec.in_progress_timeout}")
    return None


def retry_or_final(spec: RolloutSpec, attempt: int, t: Transition) -> Transition:
    """Turn a failure into a retry while its failure type has retries left."""
    if t.status in (
        ExecutionStatus.FAILED,
        ExecutionStatus.REJECTED,
        ExecutionStatus.TIMED_OUT,
    ) and attempt <= spec.retries_for(t.status):
        return Transition(t.status, t.reason, retry=True)
    return t


def decide(
    spec: RolloutSpec, ex: ExecutionView, device: DeviceView | None, now: datetime
) -> Transition | None:
    """The change to apply to this execution now, or None."""
    t = _raw(spec, ex, device, now)
    return None if t is None else retry_or_final(spec, ex.attempt, t)


def backoff(
    tries: int, base: timedelta = timedelta(seconds=5), cap: timedelta = timedelta(minutes=2)
) -> timedelta:
    """Wait before checking an offline device again (or retrying): doubling, capped."""
    wait: timedelta = base * 2 ** min(tries, 16)
    return min(cap, wait)
