"""Pure decisions over one batch: which messages still need a write.

Within a batch only the newest message per device and channel (per job for job
status) is written: an older one could never win against it in MongoDB anyway, since
every update is conditional on the stored ordering key. Equal keys (a redelivered
duplicate) keep the first copy. Every message of the batch is still acknowledged once
the batch is written, the coalesced ones included.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.decode import Accepted, Rejection, decode, slot
from bridge.inbound import Inbound
from schemas.documents import order_key_str
from schemas.protocol import PresenceMessage, RejectReason, StateMessage

__all__ = [
    "Plan",
    "coalesce",
    "content_hash",
    "needed",
    "plan",
    "split_unknown",
    "stored_field",
    "with_known",
]


@dataclass(frozen=True)
class Plan:
    """What to write for a batch: the newest accepted messages and the rejections."""

    writes: tuple[Accepted, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    accepted: int = 0  # accepted messages before coalescing
    device_ids: frozenset[str] = field(default_factory=frozenset)


def coalesce(accepted: Iterable[Accepted]) -> list[Accepted]:
    """Keep the newest message per slot, in the order slots were first seen."""
    newest: dict[object, Accepted] = {}
    for item in accepted:
        key = slot(item)
        current = newest.get(key)
        if current is None or item.message.key.newer_than(current.message.key):
            newest[key] = item
    return list(newest.values())


def split_unknown(
    accepted: Sequence[Accepted], known: set[str] | frozenset[str]
) -> tuple[list[Accepted], list[Rejection]]:
    """Messages of devices without a devices document become ``unknown_device``."""
    keep: list[Accepted] = []
    unknown: list[Rejection] = []
    for item in accepted:
        if item.device_id in known:
            keep.append(item)
        else:
            unknown.append(
                Rejection(
                    item.inbound, RejectReason.UNKNOWN_DEVICE, f"no device {item.device_id!r}"
                )
            )
    return keep, unknown


def plan(batch: Sequence[Inbound]) -> Plan:
    """Decode a batch; unknown devices are decided later (they need the registry)."""
    accepted: list[Accepted] = []
    rejections: list[Rejection] = []
    for inbound in batch:
        result = decode(inbound)
        if isinstance(result, Accepted):
            accepted.append(result)
        else:
            rejections.append(result)
    return Plan(
        writes=tuple(accepted),
        rejections=tuple(rejections),
        accepted=len(accepted),
        device_ids=frozenset(a.device_id for a in accepted),
    )


def with_known(decoded: Plan, known: set[str] | frozenset[str]) -> Plan:
    """Reject unknown devices, then coalesce what is left."""
    keep, unknown = split_unknown(decoded.writes, known)
    return Plan(
        writes=tuple(coalesce(keep)),
        rejections=decoded.rejections + tuple(unknown),
        accepted=len(keep),
        device_ids=frozenset(a.device_id for a in keep),
    )


def content_hash(message: StateMessage) -> str:
    """Short hash of what a state says (not when): equal hash = nothing changed."""
    canonical = json.dumps(message.content(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def stored_field(item: Accepted) -> str:
    """The sub-document a message updates: presence, state or (job execution) report."""
    if isinstance(item.message, PresenceMessage):
        return "presence"
    if isinstance(item.message, StateMessage):
        return "state"
    return "report"


def needed(item: Accepted, stored: Mapping[str, Any] | None) -> bool:
    """Would the conditional update change ``stored``? (A pre-read skips it if not.)

    Only an optimisation: the update itself carries the same condition, so a document
    changed by another instance between the read and the write is still safe.
    """
    if stored is None:
        return False  # no document: nothing to update (we never create one)
    current = stored.get(stored_field(item)) or {}
    k = current.get("k")
    if k is not None and k >= order_key_str(item.message.key):
        return False
    message = item.message
    return not (isinstance(message, StateMessage) and current.get("h") == content_hash(message))
