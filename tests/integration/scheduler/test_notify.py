"""Notification mails at a local SMTP sink (aiosmtpd), against the real database.

Devices really go offline (a goodbye, or a power cut and its Last Will) and the bridge
records it; the notifier is then run at chosen times after that.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from aiosmtpd.controller import Controller

from deploy.local import free_port
from scheduler.clock import aware
from scheduler.notify import Notifier, SmtpMailer, SmtpSettings
from tests.integration.scheduler.devices import Rig, online_fleet, until

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


async def offline_since(rig: Rig, device: str) -> datetime:
    """When the bridge recorded ``device`` going offline."""
    return aware((await rig.statuses([device]))[device]["presence"]["since"])


async def test_offline_mail_once_per_incident_then_one_recovery(
    db, broker, mongo, s3, unique, prefix, smtp
):
    controller, sink = smtp
    async with online_fleet(db, broker, mongo, s3, unique, 2, prefix=prefix) as rig:
        a, b = rig.ids  # b stays online throughout: never mailed
        await rig.go_offline([a])
        since = await offline_since(rig, a)
        n = notifier(db, controller)
        assert await n.run(since + timedelta(minutes=9)) == 0  # not offline long enough
        assert await n.run(since + timedelta(minutes=10)) == 1
        assert await n.run(since + timedelta(minutes=10, seconds=30)) == 0  # same incident
        assert sink.subjects() == [f"[outpost] device {a} offline"]
        assert sink.mails[0][0] == ["ops@example.test"]
        await rig.come_back([a])
        assert await n.run(since + timedelta(minutes=11)) == 1
        assert await n.run(since + timedelta(minutes=12)) == 0
        assert sink.subjects()[-1] == f"[outpost] device {a} back online"
        # a new offline spell is a new incident
        await rig.go_offline([a])
        again = await offline_since(rig, a)
        assert again > since
        assert await n.run(again + timedelta(minutes=11)) == 1
    assert sink.subjects() == [
        f"[outpost] device {a} offline",
        f"[outpost] device {a} back online",
        f"[outpost] device {a} offline",
    ]
    assert all(b not in body for _, body in sink.mails)


async def test_many_devices_dropping_at_once_get_one_digest(
    db, broker, mongo, s3, unique, prefix, smtp
):
    controller, sink = smtp
    async with online_fleet(db, broker, mongo, s3, unique, 30, prefix=prefix) as rig:
        await rig.fleet.drop(rig.ids, abrupt=True)  # power cut: the broker sends the wills
        await until(lambda: rig.recorded(rig.ids, online=False), 60, "wills recorded")
        latest = max([await offline_since(rig, d) for d in rig.ids])
        assert await notifier(db, controller).run(latest + timedelta(minutes=15)) == 1
    assert sink.subjects() == ["[outpost] 30 devices offline"]
    assert all(d in sink.mails[0][1] for d in rig.ids)


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
