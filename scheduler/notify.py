"""E-mail notifications: devices offline too long (and back), rollouts that ended.

Debounce and exactly-once across instances come from unique inserts into
``scheduler_notices`` (``_id`` = ``offline:<device>@<offline since>``,
``rollout:<id>:<status>``): an incident is mailed once, whichever instance sees it
first. A device that comes back after an offline mail gets one recovery mail
(``recovered`` is set on the notice; only the claimed firing writes it). When more than
``digest_over`` devices of a tenant go offline (or come back) in one pass, the tenant
gets one digest mail instead of one mail each.

Decisions are pure (:func:`offline_incidents`, :func:`group_mails`); SMTP is at the edge
(:class:`SmtpMailer`, stdlib ``smtplib`` in a worker thread; errors become
:class:`NotifyError`).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict
from pymongo.errors import DuplicateKeyError, PyMongoError

from outpost.settings import OutpostSettings
from outpost.store import Document
from scheduler.clock import aware
from scheduler.errors import SchedulerError, StoreError
from schemas.documents import DEVICE_PRESENCE, DEVICES, ROLLOUT_PROGRESS, SCHEDULER_NOTICES

__all__ = [
    "NOTICES",
    "Mail",
    "Notifier",
    "NotifyError",
    "SmtpMailer",
    "SmtpSettings",
    "group_mails",
    "offline_incidents",
]

NOTICES = SCHEDULER_NOTICES


class NotifyError(SchedulerError):
    """The SMTP server did not take a mail."""


class SmtpSettings(OutpostSettings):
    """``OUTPOST_SMTP_*``. ``recipients`` maps tenant id to addresses (JSON), ``*`` for
    every tenant without its own entry. Unset ``host``: notifications are off."""

    model_config = SettingsConfigDict(env_prefix="OUTPOST_SMTP_")
    host: str | None = Field(default=None, description="SMTP server; unset: no mail")
    port: int = Field(default=587, ge=1, le=65535, description="SMTP port")
    security: Literal["none", "starttls", "tls"] = Field(
        default="starttls", description="none, starttls or tls"
    )
    username: str | None = Field(default=None, description="SMTP account")
    password: SecretStr | None = Field(default=None, description="Its password")
    sender: str = Field(default="outpost@localhost", description="From address")
    recipients: dict[str, list[str]] = Field(
        default_factory=dict, description='JSON {"tenant": ["a@b"], "*": [...]}'
    )
    offline_minutes: float = Field(
        default=10, gt=0, description="Mail when a device is offline this long"
    )
    digest_over: int = Field(
        default=10, ge=1, description="One digest per tenant above this many incidents"
    )
    timeout: float = Field(default=10, gt=0, description="SMTP timeout, seconds")

    def recipients_for(self, tenant: str) -> list[str]:
        return self.recipients.get(tenant) or self.recipients.get("*") or []


@dataclass(frozen=True)
class Mail:
    tenant: str
    subject: str
    body: str


@dataclass(frozen=True)
class Incident:
    notice_id: str
    tenant: str
    device_id: str
    since: datetime


def offline_incidents(
    devices: list[Document], now: datetime, offline_for: timedelta
) -> list[Incident]:
    """Devices offline for longer than ``offline_for``, one incident per offline spell."""
    found = []
    for d in devices:
        presence = d.get("presence") or {}
        since = presence.get("since")
        if presence.get("status") != "offline" or not isinstance(since, datetime):
            continue
        since = aware(since)
        if now - since >= offline_for:
            found.append(
                Incident(
                    f"offline:{d['_id']}@{since.isoformat()}",
                    str(d.get("tenant_id")),
                    d["_id"],
                    since,
                )
            )
    return found


def group_mails(
    kind: Literal["offline", "back online"], incidents: list[Incident], digest_over: int
) -> list[Mail]:
    """One mail per device, or one digest per tenant when more than ``digest_over``."""
    by_tenant: dict[str, list[Incident]] = defaultdict(list)
    for incident in incidents:
        by_tenant[incident.tenant].append(incident)
    mails = []
    for tenant, items in sorted(by_tenant.items()):
        if len(items) > digest_over:
            listed = "\n".join(
                f"- {i.device_id} (offline since {i.since:%Y-%m-%d %H:%M} UTC)" for i in items[:200]
            )
            more = f"\n... and {len(items) - 200} more" if len(items) > 200 else ""
            mails.append(
                Mail(
                    tenant,
                    f"[outpost] {len(items)} devices {kind}",
                    f"{len(items)} devices are {kind}:\n{listed}{more}\n",
                )
            )
            continue
        for i in items:
            mails.append(
                Mail(
                    tenant,
                    f"[outpost] device {i.device_id} {kind}",
                    f"Device {i.device_id} is {kind} (offline since "
                    f"{i.since:%Y-%m-%d %H:%M} UTC).\n",
                )
            )
    return mails


class SmtpMailer:
    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    async def send(self, mail: Mail) -> bool:
        """Send to the tenant's recipients; False if it has none."""
        to = self.settings.recipients_for(mail.tenant)
        if not to or not self.settings.host:
            return False
        message = EmailMessage()
        message["From"] = self.settings.sender
        message["To"] = ", ".join(to)
        message["Subject"] = mail.subject
        message.set_content(mail.body)
        await asyncio.to_thread(self._send, message)
        return True

    def _send(self, message: EmailMessage) -> None:
        s = self.settings
        assert s.host is not None
        try:
            smtp_cls = smtplib.SMTP_SSL if s.security == "tls" else smtplib.SMTP
            with smtp_cls(s.host, s.port, timeout=s.timeout) as smtp:
                if s.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if s.username and s.password:
                    smtp.login(s.username, s.password.get_secret_value())
                smtp.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifyError(f"smtp {s.host}:{s.port}: {exc}") from exc


class Notifier:
    def __init__(self, db: Any, mailer: SmtpMailer, logger: logging.Logger) -> None:
        self.db = db
        self.mailer = mailer
        self.log = logger
        self.settings = mailer.settings

    async def run(self, now: datetime) -> int:
        """One pass (run by the instance that claimed the firing); returns mails sent."""
        try:
            mails = await self._offline(now) + await self._recovered(now)
            mails += await self._rollouts(now)
        except PyMongoError as exc:
            raise StoreError(f"notify: {exc}") from exc
        sent = 0
        for mail in mails:
            sent += await self.mailer.send(mail)
        return sent

    async def _claim(self, notice_id: str, doc: Document) -> bool:
        try:
            await self.db[NOTICES].insert_one({"_id": notice_id, **doc})
        except DuplicateKeyError:
            return False
        return True

    async def _offline(self, now: datetime) -> list[Mail]:
        offline = (
            await self.db[DEVICE_PRESENCE]
            .find({"presence.status": "offline"}, {"presence": 1, "tenant_id": 1})
            .to_list(None)
        )
        gone = {
            d["_id"]
            for d in await self.db[DEVICES]
            .find(
                {"_id": {"$in": [d["_id"] for d in offline]}, "decommissioned_at": {"$ne": None}},
                {"_id": 1},
            )
            .to_list(None)
        }
        devices = [d for d in offline if d["_id"] not in gone]
        incidents = offline_incidents(
            devices, now, timedelta(minutes=self.settings.offline_minutes)
        )
        new = [
            i
            for i in incidents
            if await self._claim(
                i.notice_id,
                {
                    "kind": "offline",
                    "device_id": i.device_id,
                    "tenant_id": i.tenant,
                    "since": i.since,
                    "at": now,
                    "recovered": None,
                },
            )
        ]
        return group_mails("offline", new, self.settings.digest_over)

    async def _recovered(self, now: datetime) -> list[Mail]:
        open_ = await self.db[NOTICES].find({"kind": "offline", "recovered": None}).to_list(None)
        if not open_:
            return []
        online = {
            d["_id"]: d
            for d in await self.db[DEVICE_PRESENCE]
            .find(
                {"_id": {"$in": [n["device_id"] for n in open_]}, "presence.status": "online"},
                {"presence": 1},
            )
            .to_list(None)
        }
        back = [n for n in open_ if n["device_id"] in online]
        if back:
            await self.db[NOTICES].update_many(
                {"_id": {"$in": [n["_id"] for n in back]}}, {"$set": {"recovered": now}}
            )
        incidents = [
            Incident(n["_id"], n["tenant_id"], n["device_id"], aware(n["since"])) for n in back
        ]
        return group_mails("back online", incidents, self.settings.digest_over)

    async def _rollouts(self, now: datetime) -> list[Mail]:
        ended = (
            await self.db[ROLLOUT_PROGRESS]
            .find(
                {"status": {"$in": ["completed", "aborted"]}},
                {"status": 1, "tenant_id": 1, "progress.reason": 1},
            )
            .to_list(None)
        )
        mails = []
        for r in ended:
            if await self._claim(
                f"rollout:{r['_id']}:{r['status']}",
                {"kind": "rollout", "tenant_id": r.get("tenant_id"), "at": now},
            ):
                reason = (r.get("progress") or {}).get("reason") or ""
                mails.append(
                    Mail(
                        str(r.get("tenant_id")),
                        f"[outpost] rollout {r['_id']} {r['status']}",
                        f"Rollout {r['_id']} {r['status']}. {reason}\n",
                    )
                )
        return mails
