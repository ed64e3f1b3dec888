"""Device commands for the routes: build, publish over the device's session, read back.

A single-device command is published here, by the api, as an MQTT v5 request (Response
Topic, Correlation Data, Message Expiry Interval ending at its deadline; QoS 1, never
retained); a group command is only written here and the scheduler sends it at its
per-minute cap. What a reader sees is computed when read (:func:`schemas.commands.
command_status`): the bridge's stored result, else ``expired`` past the deadline, else
``sent`` or ``queued``. Nothing rewrites a command when it expires.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from api.auth import Principal
from api.errors import BrokerError, InvalidInput
from api.models import CommandPublic, CommandResultPublic, LogDownload
from api.state import AppState
from api.store import commands as store
from api.store.base import new_id
from schemas import commands as c
from schemas.documents import CommandDoc, CommandResultDoc
from schemas.protocol import CommandStatus, encode
from schemas.topics import Channel, topic

__all__ = ["LOG_URL_SECONDS", "new_command", "public", "publish", "wait_for_result"]

LOG_URL_SECONDS = 300  # a log's presigned GET: short-lived, signed again at every read


def checked_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A built-in command's arguments, validated (422 naming the argument); the upload
    URL and key of ``logs`` are the backend's to set, never the caller's."""
    if name == c.CommandName.LOGS and ({"upload_url", "key"} & args.keys()):
        raise InvalidInput("args: upload_url and key are set by the backend", loc=("body", "args"))
    try:
        typed = c.check_args(name, args)
    except ValueError as exc:
        raise InvalidInput(f"args: {exc}", loc=("body", "args")) from None
    return args if typed is None else typed.model_dump(mode="json", exclude_none=True)


def new_command(
    who: Principal,
    device_id: str,
    name: str,
    args: dict[str, Any],
    now: datetime,
    expires_in_s: int,
    bulk_id: str | None = None,
) -> CommandDoc:
    command_id = new_id()
    logs_key = None
    if name == c.CommandName.LOGS:
        logs_key = c.logs_key(who.tenant_id, device_id, command_id)
        args = {**args, "key": logs_key}
    return CommandDoc(
        id=command_id,
        tenant_id=who.tenant_id,
        device_id=device_id,
        name=name,
        args=args,
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in_s),
        created_by=who.token_id,
        bulk_id=bulk_id,
        logs_key=logs_key,
    )


def properties(device_id: str, command_id: str, expiry_s: int) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = topic(Channel.COMMAND_RESULT, device_id, command_id)
    props.CorrelationData = command_id.encode()
    props.MessageExpiryInterval = expiry_s
    return props


async def publish(state: AppState, doc: CommandDoc) -> CommandDoc:
    """Publish the request (QoS 1, until the broker's PUBACK) and record it; a refused
    publish is recorded too and raised (503)."""
    now = datetime.now(UTC)
    expiry = c.expiry_interval(doc.expires_at, now)
    if expiry is None:
        return doc
    upload = state.firmware.presigned("put_object", doc.logs_key, expiry) if doc.logs_key else None
    message = c.request(doc.id, doc.name, doc.args, now, doc.expires_at, upload)
    try:
        await state.link.publish(
            topic(Channel.COMMAND, doc.device_id, doc.id),
            encode(message),
            qos=1,
            properties=properties(doc.device_id, doc.id, expiry),
        )
    except BrokerError as exc:
        state.metrics.commands.labels(command=c.label(doc.name), result="refused").inc()
        await store.mark(state.db, doc.id, {"send_error": str(exc)[:500]})
        raise
    state.metrics.commands.labels(command=c.label(doc.name), result="published").inc()
    await store.mark(state.db, doc.id, {"published_at": now})
    return doc.model_copy(update={"published_at": now})


async def wait_for_result(state: AppState, command_id: str, seconds: float) -> bool:
    """Poll the bridge's results until this command has one, at most ``seconds``."""
    deadline = time.monotonic() + seconds
    pause = 0.02
    while True:
        if await store.results(state.db, [command_id]):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(pause, left))  # a poll interval, not a synchronisation
        pause = min(pause * 2, 0.25)


def _result(doc: CommandResultDoc | None) -> CommandResultPublic | None:
    if doc is None:
        return None
    return CommandResultPublic(
        status=doc.status, output=doc.output, error=doc.error, received_at=doc.received_at
    )


def _log(state: AppState, doc: CommandDoc, result: CommandResultDoc | None) -> LogDownload | None:
    """A log result's download, for the key the backend chose (never a device's key)."""
    if result is None or result.status != "succeeded" or doc.logs_key is None:
        return None
    try:
        output = c.LogsOutput.model_validate(result.output)
    except ValidationError:  # a device's output is the device's word: no link for it
        return None
    if output.key != doc.logs_key:
        return None
    url = state.firmware.presigned("get_object", doc.logs_key, LOG_URL_SECONDS)
    expires = datetime.now(UTC) + timedelta(seconds=LOG_URL_SECONDS)
    return LogDownload(
        key=output.key, size=output.size, sha256=output.sha256, url=url, url_expires_at=expires
    )


def public(
    state: AppState, doc: CommandDoc, result: CommandResultDoc | None, sent: bool
) -> CommandPublic:
    now = datetime.now(UTC)
    status = c.command_status(
        expires_at=_utc(doc.expires_at),
        now=now,
        result=CommandStatus(result.status) if result else None,
        sent=sent or doc.published_at is not None,
        send_failed=doc.send_error is not None,
    )
    return CommandPublic(
        id=doc.id,
        device_id=doc.device_id,
        name=doc.name,
        args=doc.args,
        status=status,
        created_at=doc.created_at,
        expires_at=doc.expires_at,
        sent_at=doc.published_at,
        bulk_id=doc.bulk_id,
        result=_result(result),
        log=_log(state, doc, result),
    )


async def publics(state: AppState, docs: list[CommandDoc]) -> list[CommandPublic]:
    ids = [d.id for d in docs]
    results = await store.results(state.db, ids)
    bulk = [d.id for d in docs if d.bulk_id is not None]
    sent = await store.sent(state.db, bulk) if bulk else set()
    return [public(state, d, results.get(d.id), d.id in sent) for d in docs]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
