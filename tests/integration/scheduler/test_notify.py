"""Notification mails at a local SMTP sink (aiosmtpd), against the real database."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from aiosmtpd.controller import Controller

from deploy.local import free_port
from scheduler.notify import Notifier, SmtpMailer, SmtpSettings
from tests.integration.scheduler.conftest import device_ids

pytestmark = pytest.mark.integration
LOG = logging.getLogger("test.notify")


class Sink:
    def __init__(self) -> None:
        self.mails: list[tuple[list[str], str]] = []

    async def handle_DATA(self, server, session, envelope):
        self.mails.append((list(envelope.rcpt_tos), envelope.content.decode()))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [
            next(line[9:] for line in body.splitlines() if line.startswith("Subject: "))
            for _, body in self.mails
        ]


@pytest.fixture
def smtp():
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, sink
    controller.stop()


def notifier(db, controller, **kw) -> Notifier:
    settings = SmtpSettings(
        host="127.0.0.1",
        port=controller.port,
        security="none",
        recipients={"t1": ["ops@example.test"]},
        offline_minutes=10,
        digest_over=5,
        **kw,
    )
    return Notifier(db, SmtpMailer(settings), LOG)


async def test_offline_mail_once_per_incident_then_one_recovery(db, smtp, prefix):
    controller, sink = smtp
    now = datetime.now(UTC)
    long_ago, recently = now - timedelta(minutes=30), now - timedelta(minutes=2)
    a, b = device_ids(prefix, 2)
    await db["device_status"].insert_many(
        [
            {"_id": a, "tenant_id": "t1", "presence": {"status": "offline", "since": long_ago}},
            {"_id": b, "tenant_id": "t1", "presence": {"status": "offline", "since": recently}},
        ]
    )
    n = notifier(db, controller)
    assert await n.run(now) == 1
    assert await n.run(now + timedelta(seconds=30)) == 0  # debounced: same incident
    assert sink.subjects() == [f"[outpost] device {a} offline"]
    assert sink.mails[0][0] == ["ops@example.test"]
    await db["device_status"].update_one({"_id": a}, {"$set": {"presence.status": "online"}})
    assert await n.run(now + timedelta(minutes=1)) == 1
    assert await n.run(now + timedelta(minutes=2)) == 0
    assert sink.subjects()[-1] == f"[outpost] device {a} back online"
    # a new offline spell is a new incident
    again = now + timedelta(minutes=3)
    await db["device_status"].update_one(
        {"_id": a}, {"$set": {"presence": {"status": "offline", "since": again}}}
    )
    assert await n.run(again + timedelta(minutes=11)) == 2  # a again, and b by now
    assert len(sink.mails) == 4


async def test_many_devices_dropping_at_once_get_one_digest(db, smtp, prefix):
    controller, sink = smtp
    now = datetime.now(UTC)
    ids = device_ids(prefix, 30)
    await db["device_status"].insert_many(
        [
            {
                "_id": d,
                "tenant_id": "t1",
                "presence": {"status": "offline", "since": now - timedelta(minutes=15)},
            }
            for d in ids
        ]
    )
    assert await notifier(db, controller).run(now) == 1
    assert sink.subjects() == ["[outpost] 30 devices offline"]
    assert all(d in sink.mails[0][1] for d in ids)


async def test_finished_and_aborted_rollouts_are_mailed_once(db, smtp, unique):
    controller, sink = smtp
    await db["rollout_progress"].insert_many(
        [
            {"_id": f"r1-{unique}", "tenant_id": "t1", "status": "completed"},
            {
                "_id": f"r2-{unique}",
                "tenant_id": "t1",
                "status": "aborted",
                "progress": {"reason": "failed 30.0% of 20 finished > 20%"},
            },
            {"_id": f"r3-{unique}", "tenant_id": "t1", "status": "running"},
        ]
    )
    n = notifier(db, controller)
    assert await n.run(datetime.now(UTC)) == 2
    assert await n.run(datetime.now(UTC)) == 0
    assert sorted(sink.subjects()) == [
        f"[outpost] rollout r1-{unique} completed",
        f"[outpost] rollout r2-{unique} aborted",
    ]
    assert any("30.0%" in body for _, body in sink.mails)
