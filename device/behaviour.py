"""What a device decides, without any I/O: shared by the reference agent and the simulator.

Everything here is pure (the caller passes clocks, random sources and callbacks), so the
same rules run on the paho agent, on thousands of simulated devices, and in unit tests:

- :func:`backoff_delay`: exponential backoff with full jitter between reconnects;
- :class:`Sequencer`: the ordering key ``(session, seq)`` of every message a device sends;
- message builders for presence, state and job status;
- :func:`decide_config`: whether a received desired config must be applied;
- the upgrade job state machine: :func:`decide_job` (a command arrives),
  :func:`resume_job` (the device boots with a job on record), :class:`ImageCheck`
  (streaming size + sha256 verification) and :class:`ProgressThrottle`;
- :class:`Fault` and :func:`faulty_decision`: failures a simulated device can be told to
  have (tests and demos inject them here, never in the backend's database).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, ValidationError

from outpost import signing
from outpost.mqtt import reconnect_delay
from schemas.firmware import is_downgrade
from schemas.protocol import (
    WILL_SEQ,
    ConfigMessage,
    ConfigReport,
    JobCommand,
    JobState,
    JobStatusMessage,
    OrderKey,
    PresenceMessage,
    PresenceStatus,
    StateMessage,
)

__all__ = [
    "ApplyConfig",
    "ConfigDecision",
    "ConfigRejected",
    "Fault",
    "FirmwareTrust",
    "ImageCheck",
    "JobAction",
    "JobDecision",
    "JobRecord",
    "ProgressThrottle",
    "Sequencer",
    "apply_config",
    "backoff_delay",
    "decide_config",
    "decide_job",
    "faulty_decision",
    "job_status",
    "offline_presence",
    "online_presence",
    "parse_config",
    "parse_job",
    "resume_job",
    "state_message",
]

# --------------------------------------------------------------------------- reconnects


backoff_delay = reconnect_delay  # the one reconnect policy (outpost.mqtt), full jitter


# ----------------------------------------------------------------------------- ordering


class Sequencer:
    """Hands out ordering keys: one session per connection, ``seq`` from 1 per message."""

    def __init__(self, session: int) -> None:
        self.session = session
        self.seq = 0

    def next_key(self) -> OrderKey:
        if self.seq + 1 >= WILL_SEQ:
            raise OverflowError("sequence exhausted; start a new session")
        self.seq += 1
        return OrderKey(session=self.session, seq=self.seq)

    def will_key(self) -> OrderKey:
        return OrderKey.will(self.session)

    def new_session(self) -> int:
        """Move to the next session (call before each CONNECT; persist the result)."""
        self.session += 1
        self.seq = 0
        return self.session


# ------------------------------------------------------------------------------ messages


def online_presence(device_id: str, key: OrderKey, now: datetime) -> PresenceMessage:
    return PresenceMessage(device_id=device_id, key=key, ts=now, status=PresenceStatus.ONLINE)


def offline_presence(
    device_id: str, session: int, reason: str, now: datetime | None = None
) -> PresenceMessage:
    """The Last Will (``reason="connection_lost"``) or the graceful goodbye: same key."""
    return PresenceMessage(
        device_id=device_id,
        key=OrderKey.will(session),
        ts=now,
        status=PresenceStatus.OFFLINE,
        reason=reason,
    )


def state_message(
    device_id: str,
    key: OrderKey,
    now: datetime,
    *,
    firmware: str,
    hardware_model: str,
    config: ConfigReport | None,
    uptime_s: int,
    counters: dict[str, int | float] | None = None,
) -> StateMessage:
    return StateMessage(
        device_id=device_id,
        key=key,
        ts=now,
        firmware=firmware,
        hardware_model=hardware_model,
        config=config,
        uptime_s=max(0, uptime_s),
        counters=counters or {},
    )


def job_status(
    device_id: str, key: OrderKey, now: datetime, record: JobRecord, firmware: str | None
) -> JobStatusMessage:
    return JobStatusMessage(
        device_id=device_id,
        key=key,
        ts=now,
        job_id=record.job_id,
        status=record.status,
        progress=record.progress,
        reason=record.reason,
        firmware=firmware,
    )


# -------------------------------------------------------------------------------- config


class ConfigRejected(Exception):
    """Raised by an apply callback: the device cannot run this configuration."""


ApplyConfig = Callable[[ConfigMessage], None]
"""Applies a desired config or raises :class:`ConfigRejected` (any other error counts too)."""


class ConfigDecision(StrEnum):
    APPLY = "apply"
    ALREADY = "already"  # same version and hash as the last report: nothing to do
    STALE = "stale"  # older than what the device already handled


def _first_error(what: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return f"invalid {what}: {where}: {first['msg']}"[:1000]


def parse_config(payload: bytes) -> ConfigMessage | str:
    """The desired config, or the reason it cannot be read."""
    try:
        return ConfigMessage.model_validate_json(payload)
    except ValidationError as exc:
        return _first_error("config", exc)


def decide_config(message: ConfigMessage, last: ConfigReport | None) -> ConfigDecision:
    if last is None or message.version > last.version:
        return ConfigDecision.APPLY
    if message.version == last.version and message.hash == last.hash:
        return ConfigDecision.ALREADY
    if message.version == last.version:
        return ConfigDecision.APPLY  # same version re-issued with other content
    return ConfigDecision.STALE


def apply_config(message: ConfigMessage, apply: ApplyConfig) -> ConfigReport:
    """Run the apply callback and turn its outcome into the state's ``config`` report."""
    try:
        apply(message)
    except Exception as exc:  # noqa: BLE001 - any failure of the callback is a rejection
        error = str(exc) or type(exc).__name__
        return ConfigReport(
            version=message.version, hash=message.hash, status="rejected", error=error[:1000]
        )
    return ConfigReport(version=message.version, hash=message.hash, status="applied")


# ---------------------------------------------------------------------------------- jobs


class JobRecord(BaseModel):
    """The one upgrade job a device remembers across reboots (persisted as JSON)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    execution: int = 1
    target: str
    size: int
    sha256: str
    url: str
    url_expires_at: datetime
    previous: str
    status: JobState = JobState.QUEUED
    progress: float | None = None
    reason: str | None = None

    def moved(
        self, status: JobState, *, progress: float | None = None, reason: str | None = None
    ) -> JobRecord:
        return self.model_copy(update={"status": status, "progress": progress, "reason": reason})


def parse_job(payload: bytes) -> JobCommand | str:
    """The upgrade command, or the reason it cannot be read."""
    try:
        return JobCommand.model_validate_json(payload)
    except ValidationError as exc:
        return _first_error("job command", exc)


class JobAction(StrEnum):
    START = "start"  # new job: record it and download
    REPORT = "report"  # known job: send its current status again (e.g. redelivery)
    REJECT = "reject"  # cannot run it: report rejected with the reason
    IGNORE = "ignore"  # an older execution of a job we already handled


@dataclass(frozen=True)
class JobDecision:
    action: JobAction
    record: JobRecord


def _record_for(command: JobCommand, running: str) -> JobRecord:
    fw = command.firmware
    return JobRecord(
        job_id=command.job_id,
        execution=command.execution,
        target=fw.version,
        size=fw.size,
        sha256=fw.sha256,
        url=fw.url,
        url_expires_at=fw.url_expires_at,
        previous=running,
    )


@dataclass(frozen=True)
class FirmwareTrust:
    """What a device checks before it downloads an image: the api's signature over the
    manifest (with the public key it got at registration), its own hardware model in
    the signed list, and no downgrade unless the rollout allows one."""

    public_key: str | None
    hardware_model: str

    def refusal(self, command: JobCommand, running: str) -> str | None:
        """None when the command may run, else why not."""
        fw = command.firmware
        if self.public_key is None:
            return "no trusted firmware key configured"
        if fw.signature is None:
            return "unsigned firmware manifest"
        try:
            manifest = fw.manifest()
        except ValidationError:
            return "incomplete firmware manifest"
        if not signing.verify(self.public_key, manifest, fw.signature):
            return "firmware manifest signature does not verify"
        if self.hardware_model not in manifest.hardware_models:
            return f"image is not for hardware model {self.hardware_model}"
        if is_downgrade(fw.version, running) and not command.allow_downgrade:
            return f"downgrade from {running} to {fw.version} not allowed by the rollout"
        return None


def decide_job(
    command: JobCommand,
    current: JobRecord | None,
    running: str,
    now: datetime,
    trust: FirmwareTrust | None = None,
) -> JobDecision:
    """What to do with an upgrade command, given the job on record and the running firmware.

    One job at a time: a different job while one is in progress is rejected (the
    scheduler retries later). A new execution of the same job restarts it once the
    previous one ended. A redelivered command re-reports the current status. With
    ``trust`` a command the device cannot trust is rejected before anything is fetched.
    """
    fresh = _record_for(command, running)
    if current is not None and current.job_id == command.job_id:
        if command.execution < current.execution:
            return JobDecision(JobAction.IGNORE, current)
        if command.execution == current.execution or not current.status.terminal:
            return JobDecision(JobAction.REPORT, current)
    elif current is not None and not current.status.terminal:
        return JobDecision(
            JobAction.REJECT,
            fresh.moved(JobState.REJECTED, reason=f"busy with job {current.job_id}"),
        )
    if command.firmware.url_expires_at <= now:
        return JobDecision(
            JobAction.REJECT, fresh.moved(JobState.REJECTED, reason="download URL expired")
        )
    refusal = trust.refusal(command, running) if trust is not None else None
    if refusal is not None:
        return JobDecision(JobAction.REJECT, fresh.moved(JobState.REJECTED, reason=refusal))
    if command.firmware.version == running:
        return JobDecision(
            JobAction.REPORT,
            fresh.moved(JobState.SUCCEEDED, progress=100.0, reason="already running this version"),
        )
    return JobDecision(JobAction.START, fresh)


def resume_job(record: JobRecord, running: str, now: datetime) -> JobRecord:
    """The job on record after a (re)boot: what it is now, and so what to report or do.

    - downloading/queued: resume the download if its URL still works, else failed;
    - installing: the install was cut off; we are still on the old image -> failed;
    - rebooting: succeeded when we booted into the target, else failed (rolled back);
    - terminal: unchanged (reported again so a status lost with the reboot arrives).
    """
    if record.status in (JobState.QUEUED, JobState.DOWNLOADING):
        if record.url_expires_at <= now:
            return record.moved(JobState.FAILED, reason="download URL expired before resume")
        return record
    if record.status is JobState.INSTALLING:
        return record.moved(JobState.FAILED, reason="interrupted during install")
    if record.status is JobState.REBOOTING:
        if running == record.target:
            return record.moved(JobState.SUCCEEDED, progress=100.0)
        return record.moved(JobState.FAILED, reason=f"booted {running}, expected {record.target}")
    return record


class ImageCheck:
    """Streaming size and sha256 check of a firmware image, chunk by chunk."""

    def __init__(self, size: int, sha256: str) -> None:
        self.expected_size = size
        self.expected_sha256 = sha256
        self.reset()

    def reset(self) -> None:
        """Forget what was received (the server restarted the download from byte 0)."""
        self.received = 0
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        """Add a chunk; raises ValueError as soon as the image is longer than announced."""
        self.received += len(chunk)
        if self.received > self.expected_size:
            raise ValueError(f"size mismatch: more than {self.expected_size} bytes")
        self._hash.update(chunk)

    @property
    def progress(self) -> float:
        return round(100.0 * self.received / self.expected_size, 1)

    def failure(self) -> str | None:
        """None when the complete image matches, else the reason."""
        if self.received != self.expected_size:
            return f"size mismatch: got {self.received} bytes, expected {self.expected_size}"
        digest = self._hash.hexdigest()
        if digest != self.expected_sha256:
            return f"sha256 mismatch: got {digest}, expected {self.expected_sha256}"
        return None


class ProgressThrottle:
    """Report download progress every ``step`` percent, not every chunk."""

    def __init__(self, step: float = 10.0) -> None:
        self.step = step
        self.last: float | None = None

    def due(self, progress: float) -> bool:
        if self.last is not None and (
            progress <= self.last or progress < min(self.last + self.step, 100.0)
        ):
            return False
        self.last = progress
        return True


# -------------------------------------------------------------------------------- faults


class Fault(StrEnum):
    """A failure a simulated device has on every upgrade job it is sent.

    The last two model firmware that reports success before its reboot (some do, once
    the image is installed): only the backend's post-upgrade check can catch them.
    """

    SILENT = "silent"  # takes the command and never answers
    REJECT = "reject"  # refuses the command
    FAIL_DOWNLOAD = "fail_download"  # the download breaks off: reports failed
    NO_RETURN = "no_return"  # reports succeeded, reboots and never comes back online
    OLD_IMAGE = "old_image"  # reports succeeded, reboots and comes back on the old image

    @property
    def early_success(self) -> bool:
        return self in (Fault.NO_RETURN, Fault.OLD_IMAGE)


def faulty_decision(decision: JobDecision, fault: Fault | None) -> JobDecision:
    """What a device with ``fault`` does instead of ``decision`` (a new job only)."""
    if fault is None or decision.action is not JobAction.START:
        return decision
    if fault is Fault.SILENT:
        return JobDecision(JobAction.IGNORE, decision.record)
    if fault is Fault.REJECT:
        rejected = decision.record.moved(JobState.REJECTED, reason="refused (injected fault)")
        return JobDecision(JobAction.REJECT, rejected)
    return decision
