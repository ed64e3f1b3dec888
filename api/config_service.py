"""Desired config: render, version, store, publish. Decisions are in :func:`plan`.

Order of effects: history entry, then the conditional pointer move, then the retained
publish. A publish that fails leaves the pointer ahead of the broker; the scheduler's
config reconcile republishes it (and the response says ``published: false``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.auth import Principal
from api.config_render import Rendered, render
from api.errors import BrokerError, PreconditionFailed
from api.state import AppState
from api.store import devices as device_store
from api.store import groups as group_store
from api.store.base import Doc
from schemas.protocol import ConfigMessage, encode, utc_now
from schemas.topics import Channel, topic


@dataclass(frozen=True, slots=True)
class Change:
    device_id: str
    expected_version: int | None
    version: int
    rendered: Rendered


def plan(
    device: Doc,
    template: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    rendered: Rendered | None = None,
) -> Change | None:
    """The change ``device`` needs for this template/overrides; None if it is a no-op."""
    if rendered is None:
        own = device.get("overrides") or {} if overrides is None else overrides
        rendered = render(template, own, what=f"effective config of {device['_id']}")
        if rendered is None:
            return None
    pointer = device.get("desired_config") or {}
    if pointer.get("hash") == rendered.hash:
        return None
    current = pointer.get("version")
    return Change(device["_id"], current, (current or 0) + 1, rendered)


async def template_of(state: AppState, tenant_id: str, group: str | None) -> dict[str, Any]:
    if group is None:
        return {}
    doc = await group_store.get(state.db, tenant_id, group)
    return dict(doc["template"]) if doc else {}


async def apply(
    state: AppState,
    who: Principal,
    changes: list[Change],
    cause: str,
    extra: dict[str, Doc] | None = None,
) -> tuple[set[str], int]:
    """Store and publish ``changes``; returns (device ids changed, publishes that worked)."""
    extra = extra or {}
    configs = [
        device_store.config_doc(
            who.tenant_id,
            c.device_id,
            c.version,
            c.rendered.hash,
            c.rendered.config,
            who.token_id,
            cause,
        )
        for c in changes
    ]
    updates = [
        device_store.desired_update(
            c.device_id, c.expected_version, c.version, c.rendered.hash, extra.get(c.device_id)
        )
        for c in changes
    ]
    expected = {c.device_id: c.expected_version for c in changes}
    moved = await device_store.apply_configs(state.db, configs, updates, expected)
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
    try:
        await state.link.publish(
            topic(Channel.CONFIG, change.device_id), encode(message), qos=1, retain=True
        )
    except BrokerError as exc:
        state.metrics.configs_published.labels("failed").inc()
        state.logger.warning(
            "config publish failed",
            extra={"device_id": change.device_id, "version": change.version, "error": exc.detail},
        )
        return 0
    state.metrics.configs_published.labels("ok").inc()
    return 1


def check_if_match(device: Doc, if_match: int | None) -> None:
    current = (device.get("desired_config") or {}).get("version")
    if if_match is not None and if_match != (current or 0):
        raise PreconditionFailed(f"config version is {current or 0}, If-Match said {if_match}")


async def change_device(
    state: AppState,
    who: Principal,
    device: Doc,
    *,
    cause: str,
    overrides: dict[str, Any] | None = None,
    rendered: Rendered | None = None,
    extra: Doc | None = None,
) -> tuple[Change | None, bool]:
    """Re-render one device; (the change or None, published?). 412 if it moved meanwhile."""
    fields = extra or {}
    group = fields["group"] if "group" in fields else device.get("group")
    template = await template_of(state, who.tenant_id, group)
    change = plan(device, template, overrides, rendered)
    if change is None:
        if extra:
            await device_store.update_fields(state.db, who.tenant_id, device["_id"], extra)
        return None, False
    moved, published = await apply(
        state, who, [change], cause, {device["_id"]: extra} if extra else None
    )
    if device["_id"] not in moved:
        raise PreconditionFailed("the device's config changed meanwhile; read it and retry")
    return change, published == 1
