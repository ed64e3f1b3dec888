"""Execution transitions from bridge reports, timeouts, retries, grace check (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scheduler.executions import DeviceView, ExecutionView, backoff, decide
from schemas.documents import JobExecutionDoc, JobReportDoc
from schemas.rollouts import ExecutionStatus, RolloutSpec

S = ExecutionStatus
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = RolloutSpec.model_validate(
    {
        "firmware": {"id": "fw", "version": "2.0"},
        "target": {"group": "g"},
        "waves": {"kind": "fixed", "size": 10},
        "in_progress_timeout": "PT10M",
        "grace_period": "PT5M",
        "retries": [
            {"failure_type": "timed_out", "max_retries": 2},
            {"failure_type": "failed", "max_retries": 1},
        ],
    }
)
ONLINE_NEW = DeviceView(online=True, firmware="2.0")
ONLINE_OLD = DeviceView(online=True, firmware="1.0")


def ex(status=S.QUEUED, attempt=1, sent=T0, report=None, stale_k=""):
    execution = JobExecutionDoc(
        id="j:d",
        rollout_id="j",
        job_id="j",
        device_id="d",
        wave=1,
        status=status,
        attempt=attempt,
        sent_at=sent,
        created_at=T0,
        stale_k=stale_k,
    )
    seen = None
    if report:
        seen = JobReportDoc(
            id="j:d",
            job_id="j",
            device_id="d",
            k="0001",
            updated_at=T0 + timedelta(minutes=1),
            **report,
        )
    return ExecutionView.of(execution, seen)


def test_unsent_and_terminal_executions_do_not_move():
    assert decide(SPEC, ex(sent=None), None, T0 + timedelta(days=1)) is None
    assert decide(SPEC, ex(S.SUCCEEDED), None, T0 + timedelta(days=1)) is None


def test_progress_reports_leave_the_stored_status_alone():
    assert (
        decide(SPEC, ex(report={"status": "downloading"}), ONLINE_OLD, T0 + timedelta(minutes=2))
        is None
    )


def test_reported_success_moves_to_in_progress_while_the_grace_check_runs():
    t = decide(SPEC, ex(report={"status": "succeeded"}), ONLINE_OLD, T0 + timedelta(minutes=2))
    assert t is not None
    assert t.status is S.IN_PROGRESS
    assert not t.final


def test_succeeded_needs_device_back_online_on_new_version():
    e = ex(S.IN_PROGRESS, report={"status": "succeeded"})
    assert decide(SPEC, e, ONLINE_OLD, T0 + timedelta(minutes=3)) is None  # still in grace
    assert decide(SPEC, e, DeviceView(False, "2.0"), T0 + timedelta(minutes=3)) is None
    t = decide(SPEC, e, ONLINE_NEW, T0 + timedelta(minutes=3))
    assert t is not None
    assert t.status is S.SUCCEEDED
    assert t.final


def test_succeeded_but_not_back_within_grace_fails_and_is_retried_once():
    e = ex(S.IN_PROGRESS, report={"status": "succeeded"})
    t = decide(SPEC, e, ONLINE_OLD, T0 + timedelta(minutes=6, seconds=1))
    assert t is not None
    assert t.status is S.FAILED
    assert t.retry
    second = ex(S.IN_PROGRESS, attempt=2, report={"status": "succeeded"})
    t2 = decide(SPEC, second, ONLINE_OLD, T0 + timedelta(minutes=7))
    assert t2 is not None
    assert t2.status is S.FAILED
    assert t2.final


def test_rejected_has_no_retries_here():
    t = decide(
        SPEC,
        ex(S.IN_PROGRESS, report={"status": "rejected", "reason": "model"}),
        ONLINE_OLD,
        T0 + timedelta(minutes=2),
    )
    assert t is not None
    assert t.status is S.REJECTED
    assert t.final
    assert t.reason == "model"


def test_no_answer_times_out_and_timeouts_retry_twice():
    late = T0 + timedelta(minutes=10, seconds=1)
    assert decide(SPEC, ex(), None, T0 + timedelta(minutes=9)) is None
    for attempt, retry in ((1, True), (2, True), (3, False)):
        t = decide(SPEC, ex(attempt=attempt), None, late)
        assert t is not None
        assert t.status is S.TIMED_OUT
        assert t.retry is retry


def test_report_of_a_previous_attempt_is_ignored():
    stale = ex(
        attempt=2, sent=T0 + timedelta(minutes=30), report={"status": "failed"}, stale_k="0001"
    )
    assert decide(SPEC, stale, ONLINE_OLD, T0 + timedelta(minutes=31)) is None


def test_backoff_doubles_and_is_capped():
    assert backoff(0) == timedelta(seconds=5)
    assert backoff(3) == timedelta(seconds=40)
    assert backoff(50) == timedelta(minutes=2)


def test_the_device_is_read_only_for_the_health_gate_after_a_reported_success():
    """Tracking reads device presence only where needs_device says: every execution for
    which decide() gives a different answer with and without the device is among them."""
    views = [
        ex(),
        ex(sent=None),
        ex(report={"status": "downloading"}),
        ex(report={"status": "failed"}),
        ex(report={"status": "succeeded"}),
        ex(S.IN_PROGRESS, report={"status": "succeeded"}),
        ex(S.SUCCEEDED, report={"status": "succeeded"}),
        ex(attempt=2, report={"status": "succeeded"}, stale_k="0001"),  # an earlier attempt's
    ]
    assert [i for i, v in enumerate(views) if v.needs_device] == [4, 5]
    for now in (T0 + timedelta(minutes=2), T0 + timedelta(minutes=20)):
        for v in views:
            for device in (None, ONLINE_NEW, ONLINE_OLD):
                if not v.needs_device:
                    assert decide(SPEC, v, device, now) == decide(SPEC, v, None, now)
