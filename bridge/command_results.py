"""Pure decisions on command results: which to store, which to refuse, and what to store.

A result is stored once, the first one received for a command of *this* device before the
command's deadline (the topic carries the device id; the command's owner is in the api's
``commands`` document). The store's unique ``_id`` (the command id) makes "the first one"
hold across batches and bridge instances; within a batch the first in arrival order is
sent, later copies are duplicates. Refused, with a closed reason (a metric label):

- ``retained``: a retained result (a device must never retain one; a new shared
  subscription would be handed it again);
- ``unknown_command``: no such command, or it belongs to another device (a device cannot
  answer another device's command);
- ``expired_command``: received at or after the deadline: the command counts as expired
  and its late result is not kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bridge.decode import Accepted, Rejection
from outpost.store import Document, Insert
from schemas.commands import label
from schemas.documents import order_key_str, to_json_text
from schemas.protocol import CommandResultMessage, RejectReason

__all__ = ["CommandFacts", "Judged", "insert_op", "is_result", "judge", "judge_all"]


@dataclass(frozen=True, slots=True)
class CommandFacts:
    """What the bridge needs of a command (api's ``commands`` document)."""

    device_id: str
    tenant_id: str | None
    name: str
    expires_at: datetime

    @classmethod
    def from_doc(cls, doc: Mapping[str, object]) -> CommandFacts:
        expires = doc["expires_at"]
        assert isinstance(expires, datetime)
        return cls(
            str(doc["device_id"]),
            None if doc.get("tenant_id") is None else str(doc["tenant_id"]),
            str(doc.get("name", "")),
            expires if expires.tzinfo else expires.replace(tzinfo=UTC),
        )


@dataclass
class Judged:
    """A batch of results: what to insert, what was refused, what repeated itself."""

    store: list[tuple[Accepted, CommandFacts]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    duplicates: int = 0


def is_result(item: Accepted | Rejection) -> bool:
    return isinstance(item, Accepted) and isinstance(item.message, CommandResultMessage)


def command_id(item: Accepted) -> str:
    message = item.message
    assert isinstance(message, CommandResultMessage)
    return message.command_id


def judge(item: Accepted, command: CommandFacts | None) -> tuple[RejectReason, str] | None:
    """Why ``item`` is refused, or None to store it."""
    cid = command_id(item)
    if item.inbound.retain:
        return RejectReason.RETAINED, f"retained result for {cid!r}"
    if command is None or command.device_id != item.device_id:
        return RejectReason.UNKNOWN_COMMAND, f"no command {cid!r} of {item.device_id!r}"
    if item.inbound.received_at >= command.expires_at:
        return RejectReason.EXPIRED_COMMAND, f"command {cid!r} expired at {command.expires_at}"
    return None


def judge_all(items: Sequence[Accepted], commands: Mapping[str, CommandFacts]) -> Judged:
    judged = Judged()
    seen: set[str] = set()
    for item in items:
        cid = command_id(item)
        command = commands.get(cid)
        refused = judge(item, command)
        if refused is not None:
            judged.rejections.append(Rejection(item.inbound, *refused))
        elif cid in seen:
            judged.duplicates += 1
        else:
            assert command is not None
            seen.add(cid)
            judged.store.append((item, command))
    return judged


def insert_op(item: Accepted, command: CommandFacts) -> Insert:
    """The result document (:class:`schemas.documents.CommandResultDoc`); the output is
    stored as JSON text (device-chosen keys may hold '.' or '$')."""
    message = item.message
    assert isinstance(message, CommandResultMessage)
    doc: Document = {
        "_id": message.command_id,
        "tenant_id": command.tenant_id,
        "device_id": item.device_id,
        "name": command.name,
        "status": message.status.value,
        "output": to_json_text(message.output),
        "error": message.error,
        "k": order_key_str(message.key, item.epoch),
        "received_at": item.inbound.received_at,
    }
    return Insert(doc)


def labels(items: Iterable[tuple[Accepted, CommandFacts]]) -> list[tuple[str, str]]:
    """(command, status) metric labels of stored results; names outside the built-ins are
    ``other``."""
    out = []
    for item, command in items:
        message = item.message
        assert isinstance(message, CommandResultMessage)
        out.append((label(command.name), message.status.value))
    return out
