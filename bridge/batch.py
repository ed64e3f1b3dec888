"""Pure decisions over one batch: which messages still need a write.

Within a batch only the newest message per device and channel (per job for job
status) is written: an older one could never win against it in MongoDB anyway, since
every update is conditional on the stored ordering key. Equal keys (a redelivered
duplicate) keep the first copy. Every message of the batch is still acknowledged once
the batch is written, the coalesced ones included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bridge.decode import Accepted, Rejection, decode, slot
from bridge.inbound import Inbound
from schemas.protocol import RejectReason

__all__ = ["Plan", "coalesce", "plan", "split_unknown"]


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


def split_unknown(accepted: Sequence[Accepted],
                  known: set[str] | frozenset[str]) -> tuple[list[Accepted], list[Rejection]]:
    """Messages of devices without a devices document become ``unknown_device``."""
    keep: list[Accepted] = []
    unknown: list[Rejection] = []
    for item in accepted:
        if item.device_id in known:
            keep.append(item)
        else:
            unknown.append(Rejection(item.inbound, RejectReason.UNKNOWN_DEVICE,
                                     f"no device {item.device_id!r}"))
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
    return Plan(writes=tuple(accepted), rejections=tuple(rejections), accepted=len(accepted),
                device_ids=frozenset(a.device_id for a in accepted))


def with_known(decoded: Plan, known: set[str] | frozenset[str]) -> Plan:
    """Reject unknown devices, then coalesce what is left."""
    keep, unknown = split_unknown(decoded.writes, known)
    return Plan(writes=tuple(coalesce(keep)), rejections=decoded.rejections + tuple(unknown),
                accepted=len(keep), device_ids=frozenset(a.device_id for a in keep))
