"""The device's pure decisions: backoff, ordering keys, config and the job state machine."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from device import behaviour as b
from schemas.examples import example_wifi_config
from schemas.protocol import (
    WILL_SEQ,
    ConfigMessage,
    ConfigReport,
    FirmwareRef,
    JobCommand,
    JobState,
    OrderKey,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

# ------------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("attempt", "window"), [(0, 1.0), (1, 2.0), (3, 8.0), (6, 60.0), (500, 60.0)]
)
def test_backoff_full_jitter_spans_the_whole_window(attempt: int, window: float):
    assert b.backoff_delay(attempt, base=1.0, cap=60.0, rand=lambda: 0.0) == 0.0
    top = b.backoff_delay(attempt, base=1.0, cap=60.0, rand=lambda: 0.999999)
    assert window * 0.99 < top < window


def test_backoff_spreads_a_fleet():
    import random

    rng = random.Random(7)
    delays = [b.backoff_delay(4, base=1.0, cap=60.0, rand=rng.random) for _ in range(2000)]
    assert all(0 <= d < 16.0 for d in delays)
    in_first_second = sum(d < 1.0 for d in delays)
    assert in_first_second < 2000 * 0.1  # not everyone comes back at once


@pytest.mark.parametrize("bad", [{"attempt": -1}, {"base": 0}, {"cap": -1}])
def test_backoff_rejects_nonsense(bad: dict):
    args = {"attempt": 0, "base": 1.0, "cap": 10.0} | bad
    with pytest.raises(ValueError, match="attempt"):
        b.backoff_delay(args.pop("attempt"), **args)


# ------------------------------------------------------------------------------ ordering


def test_sequencer_orders_messages_within_and_across_sessions():
    seq = b.Sequencer(session=4)
    seq.new_session()
    first, second = seq.next_key(), seq.next_key()
    will = seq.will_key()
    assert (first.session, first.seq, second.seq) == (5, 1, 2)
    assert will == OrderKey(session=5, seq=WILL_SEQ)
    assert second.newer_than(first)
    assert will.newer_than(second)
    seq.new_session()
    online_again = seq.next_key()
    assert online_again == OrderKey(session=6, seq=1)
    assert online_again.newer_than(will)  # the next session beats the previous will


def test_will_and_graceful_goodbye_carry_the_same_key():
    will = b.offline_presence("ap-0001", 9, "connection_lost")
    bye = b.offline_presence("ap-0001", 9, "shutdown", NOW)
    assert will.key == bye.key == OrderKey.will(9)
    assert will.status == bye.status == "offline"


# -------------------------------------------------------------------------------- config


def config(version: int, vlan: int = 99) -> ConfigMessage:
    wifi = example_wifi_config().model_copy(update={"management_vlan": vlan})
    return ConfigMessage.for_config(wifi, version=version, issued_at=NOW)


def report(message: ConfigMessage, status: str = "applied") -> ConfigReport:
    return ConfigReport(version=message.version, hash=message.hash, status=status)  # type: ignore[arg-type]


def test_config_decisions():
    v3 = config(3)
    assert b.decide_config(v3, None) is b.ConfigDecision.APPLY
    assert b.decide_config(v3, report(v3)) is b.ConfigDecision.ALREADY
    assert b.decide_config(v3, report(v3, "rejected")) is b.ConfigDecision.ALREADY
    assert b.decide_config(config(4), report(v3)) is b.ConfigDecision.APPLY
    assert b.decide_config(v3, report(config(4))) is b.ConfigDecision.STALE
    assert b.decide_config(config(3, vlan=7), report(v3)) is b.ConfigDecision.APPLY


def test_apply_config_reports_applied_or_the_error():
    v3 = config(3)
    assert b.apply_config(v3, lambda _m: None) == report(v3)

    def refuse(_m: ConfigMessage) -> None:
        raise b.ConfigRejected("no 6 GHz radio")

    rejected = b.apply_config(v3, refuse)
    assert (rejected.status, rejected.error, rejected.version) == ("rejected", "no 6 GHz radio", 3)

    def crash(_m: ConfigMessage) -> None:
        raise KeyError("radios")

    assert b.apply_config(v3, crash).status == "rejected"


def test_parse_config_gives_a_reason_instead_of_raising():
    assert isinstance(b.parse_config(config(2).model_dump_json().encode()), ConfigMessage)
    assert b.parse_config(b"{nope").startswith("invalid config")  # type: ignore[union-attr]
    tampered = config(2).model_dump(mode="json") | {"hash": "0" * 64}
    import json

    reason = b.parse_config(json.dumps(tampered).encode())
    assert isinstance(reason, str)
    assert "hash" in reason


# ---------------------------------------------------------------------------------- jobs


def command(
    job_id: str = "job-1",
    version: str = "2.0.0",
    execution: int = 1,
    expires: datetime = NOW + timedelta(minutes=10),
) -> JobCommand:
    fw = FirmwareRef(
        version=version,
        size=10,
        sha256="a" * 64,
        url="https://s3.example.net/fw.bin",
        url_expires_at=expires,
    )
    return JobCommand(job_id=job_id, execution=execution, firmware=fw, issued_at=NOW)


def test_new_job_starts():
    decision = b.decide_job(command(), None, "1.0.0", NOW)
    assert decision.action is b.JobAction.START
    assert (decision.record.status, decision.record.previous, decision.record.target) == (
        JobState.QUEUED,
        "1.0.0",
        "2.0.0",
    )


def test_injected_faults_change_only_a_new_job():
    start = b.decide_job(command(), None, "1.0.0", NOW)
    silent = b.faulty_decision(start, b.Fault.SILENT)
    assert silent == b.JobDecision(b.JobAction.IGNORE, start.record)
    refused = b.faulty_decision(start, b.Fault.REJECT)
    assert refused.action is b.JobAction.REJECT
    assert (refused.record.status, refused.record.reason) == (
        JobState.REJECTED,
        "refused (injected fault)",
    )
    for later in (b.Fault.FAIL_DOWNLOAD, b.Fault.NO_RETURN, b.Fault.OLD_IMAGE, None):
        assert b.faulty_decision(start, later) == start  # they happen during the job
    current = start.record.moved(JobState.DOWNLOADING, progress=10.0)
    again = b.decide_job(command(), current, "1.0.0", NOW)
    assert b.faulty_decision(again, b.Fault.REJECT) == again  # a known job is re-reported
    assert [f for f in b.Fault if f.early_success] == [b.Fault.NO_RETURN, b.Fault.OLD_IMAGE]


def test_redelivered_command_re_reports_current_status():
    current = b.decide_job(command(), None, "1.0.0", NOW).record.moved(
        JobState.DOWNLOADING, progress=40.0
    )
    decision = b.decide_job(command(), current, "1.0.0", NOW)
    assert decision == b.JobDecision(b.JobAction.REPORT, current)


def test_other_job_while_busy_is_rejected_and_current_kept():
    current = b.decide_job(command(), None, "1.0.0", NOW).record.moved(JobState.DOWNLOADING)
    decision = b.decide_job(command("job-2"), current, "1.0.0", NOW)
    assert decision.action is b.JobAction.REJECT
    assert decision.record.job_id == "job-2"
    assert decision.record.reason == "busy with job job-1"


def test_expired_url_is_rejected():
    decision = b.decide_job(command(expires=NOW - timedelta(seconds=1)), None, "1.0.0", NOW)
    assert (decision.action, decision.record.reason) == (b.JobAction.REJECT, "download URL expired")


def test_already_running_target_succeeds_without_download():
    decision = b.decide_job(command(version="1.0.0"), None, "1.0.0", NOW)
    assert decision.action is b.JobAction.REPORT
    assert decision.record.status is JobState.SUCCEEDED


def test_new_execution_restarts_a_finished_job_and_old_ones_are_ignored():
    failed = b.decide_job(command(execution=2), None, "1.0.0", NOW).record.moved(
        JobState.FAILED, reason="sha256 mismatch"
    )
    assert b.decide_job(command(execution=3), failed, "1.0.0", NOW).action is b.JobAction.START
    assert b.decide_job(command(execution=1), failed, "1.0.0", NOW).action is b.JobAction.IGNORE


@pytest.mark.parametrize(
    ("status", "running", "expected", "reason"),
    [
        (JobState.DOWNLOADING, "1.0.0", JobState.DOWNLOADING, None),
        (JobState.QUEUED, "1.0.0", JobState.QUEUED, None),
        (JobState.INSTALLING, "1.0.0", JobState.FAILED, "interrupted during install"),
        (JobState.REBOOTING, "2.0.0", JobState.SUCCEEDED, None),
        (JobState.REBOOTING, "1.0.0", JobState.FAILED, "booted 1.0.0, expected 2.0.0"),
        (JobState.FAILED, "1.0.0", JobState.FAILED, "earlier"),
    ],
)
def test_resume_after_boot(status: JobState, running: str, expected: JobState, reason: str | None):
    record = b.decide_job(command(), None, "1.0.0", NOW).record.moved(
        status, reason="earlier" if status is JobState.FAILED else None
    )
    resumed = b.resume_job(record, running, NOW)
    assert (resumed.status, resumed.reason) == (expected, reason)


def test_resume_download_after_url_expired_fails():
    record = b.decide_job(command(), None, "1.0.0", NOW).record.moved(JobState.DOWNLOADING)
    resumed = b.resume_job(record, "1.0.0", NOW + timedelta(hours=1))
    assert resumed.status is JobState.FAILED
    assert "expired" in (resumed.reason or "")


# --------------------------------------------------------------------------- image check


def test_image_check_accepts_the_right_image_in_chunks():
    image = bytes(range(256)) * 40
    check = b.ImageCheck(len(image), hashlib.sha256(image).hexdigest())
    for start in range(0, len(image), 1000):
        check.update(image[start : start + 1000])
    assert check.failure() is None
    assert check.progress == 100.0


def test_image_check_reports_sha_and_size_mismatch():
    image = b"x" * 100
    check = b.ImageCheck(100, "0" * 64)
    check.update(image)
    assert (check.failure() or "").startswith("sha256 mismatch")
    short = b.ImageCheck(200, hashlib.sha256(image).hexdigest())
    short.update(image)
    assert short.failure() == "size mismatch: got 100 bytes, expected 200"
    with pytest.raises(ValueError, match="size mismatch"):
        b.ImageCheck(50, "0" * 64).update(image)


def test_progress_throttle_reports_every_step_and_the_end_once():
    throttle = b.ProgressThrottle(step=10)
    due = [p for p in (0, 3, 9.9, 10, 15, 20.5, 99, 100, 100) if throttle.due(p)]
    assert due == [0, 10, 20.5, 99, 100]
