"""Desired config: render, version, store, publish. Decisions are in :func:`plan`.

Order of effects, per device, inside one revision of its ``devices`` document
(:mod:`api.store.revisions`): the history entry, then the pointer move, then the retained
publish. A publish that fails leaves the pointer ahead of the broker; the scheduler's
config reconcile republishes it (and the response says ``published: false``).

A request that loses a race (another request revised the device after it was read) reads
the device again and plans again; a precondition it was given (If-Match) is checked on
every read, so a config moved meanwhile answers 412.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from api.auth import Principal
from api.config_render import Loc, Rendered, render
from api.errors import BrokerError, NotFound, PreconditionFailed
from api.state import AppState
from api.store import devices as device_store
from api.store import groups as group_store
from api.store.base import Doc
from api.store.revisions import ATTEMPTS, retrying
from schemas.documents import DeviceDoc
from schemas.protocol import ConfigMessage, encode, utc_now
from schemas.topics import Channel, topic


@dataclass(frozen=True, slots=True)
class Change:
    device: DeviceDoc
    version: int
    rendered: Rendered

    @property
    def device_id(self) -> str:
        return self.device.id


def current_version(device: DeviceDoc) -> int:
    return device.desired_config.version if device.desired_config else 0


def plan(
    device: DeviceDoc,
    template: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    rendered: Rendered | None = None,
    loc: Loc = ("body",),
) -> Change | None:
    """The change ``device`` needs for this template/overrides; None if it is a no-op.

    An invalid effective config is a 422 whose errors sit under ``loc``."""
    if rendered is None:
        own = device.overrides if overrides is None else overrides
        rendered = render(template, own, what=f"effective config of {device.id}", loc=loc)
        if rendered is None:
            return None
    if device.desired_config is not None and device.desired_config.hash == rendered.hash:
        return None
    return Change(device, current_version(device) + 1, rendered)


async def template_of(state: AppState, tenant_id: str, group: str | None) -> dict[str, Any]:
    if group is None:
        return {}
    doc = await group_store.get(state.db, tenant_id, group)
    return dict(doc.template) if doc else {}


async def apply(
    state: AppState,
    who: Principal,
    changes: Sequence[Change],
    cause: str,
    extra: dict[str, Doc] | None = None,
) -> tuple[set[str], int]:
    """Store and publish ``changes``; returns (device ids changed, publishes that worked)."""
    extra = extra or {}
    writes = [
        device_store.ConfigWrite(
            c.device,
            c.version,
            c.rendered.hash,
            c.rendered.config,
            who.token_id,
            cause,
            extra.get(c.device_id),
        )
        for c in changes
    ]
    moved = await device_store.apply_configs(state.db, writes)
    published = 0
    for change in changes:
        if change.device_id in moved:
            published += await publish(state, change)
            await device_store.trim_history(
                state.db, change.device_id, change.version, state.settings.config_history
            )
    return moved, published


async def publish(state: AppState, change: Change) -> int:
    message = ConfigMessage(
        version=change.version,
        hash=change.rendered.hash,
        issued_at=utc_now(),
        config=change.rendered.config,
    )
    return await _retain(state, change.device_id, change.version, encode(message))


async def republish(state: AppState, device: DeviceDoc) -> int:
    """Retain the device's desired config again, or clear the retained config topic when
    it has none: whatever anyone else left there (a forged config) is replaced."""
    version = current_version(device)
    stored = await device_store.get_config(state.db, device.tenant_id, device.id, version)
    if stored is None:
        return await _retain(state, device.id, 0, b"")  # an empty retained message clears
    message = ConfigMessage(
        version=stored.version, hash=stored.hash, issued_at=utc_now(), config=stored.config
    )
    return await _retain(state, device.id, version, encode(message))


async def _retain(state: AppState, device_id: str, version: int, payload: bytes) -> int:
    try:
        await state.link.publish(topic(Channel.CONFIG, device_id), payload, qos=1, retain=True)
    except BrokerError as exc:
        state.metrics.configs_published.labels("failed").inc()
        state.logger.warning(
            "config publish failed",
            extra={"device_id": device_id, "version": version, "error": exc.detail},
        )
        return 0
    state.metrics.configs_published.labels("ok").inc()
    return 1


def check_if_match(device: DeviceDoc, if_match: int | None) -> None:
    current = current_version(device)
    if if_match is not None and if_match != current:
        raise PreconditionFailed(f"config version is {current}, If-Match said {if_match}")


@dataclass(frozen=True, slots=True)
class Outcome:
    device: DeviceDoc  # as read by the attempt that succeeded
    change: Change | None
    published: bool


async def change_device(
    state: AppState,
    who: Principal,
    device_id: str,
    *,
    cause: str,
    overrides: dict[str, Any] | None = None,
    rendered: Rendered | None = None,
    extra: Doc | None = None,
    if_match: int | None = None,
    loc: Loc = ("body",),
) -> Outcome:
    """Re-render one device (and write registry ``extra`` with it) as one revision."""

    async def attempt() -> Outcome | None:
        device = await device_store.get(state.db, who.tenant_id, device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r}")
        check_if_match(device, if_match)
        fields = dict(extra or {})
        if overrides is not None:
            fields["overrides"] = overrides
        group = fields.get("group", device.group)
        template = await template_of(state, who.tenant_id, group)
        change = plan(device, template, overrides, rendered, loc)
        if change is None:
            if fields and not await device_store.update_fields(state.db, device, fields):
                return None
            return Outcome(device, None, False)
        moved, published = await apply(state, who, [change], cause, {device_id: fields})
        return Outcome(device, change, published == 1) if device_id in moved else None

    return await retrying(attempt, f"device {device_id!r}")


async def change_members(
    state: AppState, who: Principal, group: str, template: dict[str, Any], cause: str
) -> tuple[set[str], int]:
    """Re-render every member of ``group`` with ``template``; members another request
    revised meanwhile are read and planned again. Returns (changed ids, published)."""
    members = await device_store.in_group(state.db, who.tenant_id, group)
    changed: set[str] = set()
    published = 0
    for _ in range(ATTEMPTS):
        changes = [c for c in (plan(d, template) for d in members) if c is not None]
        moved, sent = await apply(state, who, changes, cause)
        changed |= moved
        published += sent
        lost = {c.device_id for c in changes} - moved
        if not lost:
            break
        fresh = await device_store.in_group(state.db, who.tenant_id, group)
        members = [d for d in fresh if d.id in lost]
    return changed, published
