"""Device registry: register (with broker credentials), list, get, update, rotate,
decommission; and each device's desired config (overrides, history, rollback)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response, status
from pydantic import AwareDatetime
from pymongo.errors import DuplicateKeyError

from api import auth, config_service
from api.config_render import check_patch, validated
from api.deps import DEFAULT, Cursor, Db, Limit, Operator, State, Viewer
from api.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from api.models import (
    PLAIN,
    ConfigChange,
    ConfigPointer,
    DeviceConfigPublic,
    DeviceCreate,
    DeviceCredentials,
    DevicePublic,
    DeviceRegistered,
    DeviceUpdate,
    KeysReset,
    OverridesUpdate,
    PageOf,
    Rollback,
    SyncPublic,
)
from api.pagination import Sort
from api.state import AppState
from api.store import audit, groups
from api.store import devices as store
from api.store.base import Doc
from api.store.devices import DeviceView
from api.store.revisions import retrying
from api.sync import sync_state
from schemas.documents import Credentials, DeviceConfigDoc, DeviceDoc
from schemas.topics import DEVICE_ID_PATTERN, Channel, topic
from schemas.wifi import WifiConfigPublic, redact

router = APIRouter(tags=["devices"])
DevicePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN)]
IfMatch = Annotated[
    str,
    Header(
        description='The current config version as a strong ETag (`"3"`; `"0"` before the '
        "first config). Weak tags (`W/`) never match. Missing: 428",
        max_length=64,
    ),
]
OptionalIfMatch = Annotated[
    str | None,
    Header(description="Optional: the current config version (strong ETag)", max_length=64),
]
ETAG = {"ETag": {"description": "The version as a strong entity tag", "schema": {"type": "string"}}}


def public(view: DeviceView) -> DevicePublic:
    device, status = view.device, view.status
    sync = sync_state(device, status, view.online)
    return DevicePublic(
        id=device.id,
        hardware_model=device.hardware_model,
        group=device.group,
        tags=device.tags,
        created_at=device.created_at,
        decommissioned_at=device.decommissioned_at,
        presence=_presence(view),
        state=status.state.model_dump() if status and status.state else None,
        last_seen=view.last_seen,
        desired_config=ConfigPointer.model_validate(device.desired_config.model_dump())
        if device.desired_config
        else None,
        sync=SyncPublic(
            in_sync=sync.in_sync,
            reason=sync.reason,
            error=sync.error,
            desired_version=sync.desired_version,
            applied_version=sync.applied_version,
        ),
    )


def _presence(view: DeviceView) -> dict[str, Any] | None:
    """The stored presence, with ``status`` "unknown" when no live broker vouches for it."""
    stored = view.reported_presence.presence if view.reported_presence else None
    if stored is None:
        return None
    return {**stored.model_dump(), "status": view.presence}


def parse_if_match(value: str | None) -> int | None:
    """The version an If-Match names; None for ``*`` (any) or no header.

    Versions are strong entity tags (``"3"``; a bare ``3`` is read the same). A weak tag
    (``W/"3"``) never matches under If-Match's strong comparison (RFC 9110 13.1.1): 412.
    """
    if value is None or value.strip() == "*":
        return None
    text = value.strip()
    if text.startswith("W/"):
        raise PreconditionFailed("If-Match: weak entity tags never match; send the strong tag")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise InvalidInput(
            f"If-Match: expected a version as an entity tag, got {value[:40]!r}",
            loc=("header", "if-match"),
        )
    return int(text)


def etag(version: int) -> str:
    return f'"{version}"'


async def _device(state: AppState, tenant_id: str, device_id: str) -> DeviceDoc:
    doc = await store.get(state.db, tenant_id, device_id)
    if doc is None:
        raise NotFound(f"no device {device_id!r}")
    return doc


async def _view(state: AppState, tenant_id: str, device_id: str) -> DevicePublic:
    return public(await store.view(state.db, await _device(state, tenant_id, device_id)))


def _credentials(state: AppState, device_id: str, password: str) -> DeviceCredentials:
    signer = state.settings.signer()
    return DeviceCredentials(
        device_id=device_id,
        username=device_id,
        client_id=device_id,
        password=password,
        firmware_public_key=signer.public_text if signer else None,
    )


async def _registry_write(
    state: AppState,
    tenant_id: str,
    device_id: str,
    fields: Doc,
    *,
    reset_keys: bool = False,
) -> DeviceDoc:
    """Write registry fields as the next revision, reading again if another request won;
    with ``reset_keys`` also the next key epoch. Returns the device as it was read."""

    async def attempt() -> DeviceDoc | None:
        device = await _device(state, tenant_id, device_id)
        more = {"key_epoch": device.key_epoch + 1} if reset_keys else {}
        return device if await store.update_fields(state.db, device, fields | more) else None

    return await retrying(attempt, f"device {device_id!r}")


async def _check_group(state: AppState, tenant_id: str, group: str | None) -> None:
    await _group_template(state, tenant_id, group)


async def _group_template(state: AppState, tenant_id: str, group: str | None) -> dict[str, Any]:
    """The config template of ``group`` ({} without one); a group that does not exist is
    refused (422)."""
    if group is None:
        return {}
    doc = await groups.get(state.db, tenant_id, group)
    if doc is None:
        raise InvalidInput(f"group: no group {group!r}", loc=("body", "group"))
    return dict(doc.template)


@router.post("/devices", status_code=status.HTTP_201_CREATED)
async def register(body: DeviceCreate, state: State, who: Operator) -> DeviceRegistered:
    template = await _group_template(state, who.tenant_id, body.group)  # one read for both
    overrides = body.overrides.to_json()
    check_patch(overrides, "overrides")
    password = auth.new_device_password()
    now = datetime.now(UTC)
    doc = DeviceDoc(
        id=body.id,
        tenant_id=who.tenant_id,
        hardware_model=body.hardware_model,
        group=body.group,
        tags=sorted(set(body.tags)),
        overrides=overrides,
        created_at=now,
        credentials=Credentials(password_hash=auth.password_hash(password), rotated_at=now),
    )
    config_service.plan(doc, template, loc=("body", "overrides"))  # validates before writing
    try:
        await store.insert(state.db, doc)
    except DuplicateKeyError:
        raise Conflict(f"device id {body.id!r} is already registered") from None
    try:
        await state.broker_admin.create_device(body.id, password)
    except BaseException:
        await store.delete(state.db, body.id)
        raise
    if body.group or overrides:
        await config_service.change_device(state, who, body.id, cause="register")
    await audit.record(
        state.db,
        who,
        "device.register",
        f"device:{body.id}",
        after={"group": body.group, "tags": doc.tags, "hardware_model": body.hardware_model},
    )
    return DeviceRegistered(
        device=await _view(state, who.tenant_id, body.id),
        credentials=_credentials(state, body.id, password),
    )


@router.get("/devices")
async def list_devices(
    db: Db,
    who: Viewer,
    limit: Limit = DEFAULT,
    cursor: Cursor = None,
    online: bool | None = None,
    group: Annotated[str | None, Query(max_length=64, pattern=PLAIN)] = None,
    tag: Annotated[str | None, Query(max_length=64, pattern=PLAIN)] = None,
    firmware: Annotated[str | None, Query(max_length=64, pattern=PLAIN)] = None,
    hardware_model: Annotated[str | None, Query(max_length=64, pattern=PLAIN)] = None,
    in_sync: bool | None = None,
    last_seen_before: AwareDatetime | None = None,
    last_seen_after: AwareDatetime | None = None,
    include_decommissioned: bool = False,
    sort: Annotated[str, Query(pattern=r"^-?[a-z_]{1,32}$")] = "id",
) -> PageOf[DevicePublic]:
    flt = store.DeviceFilter(
        online,
        group,
        tag,
        firmware,
        hardware_model,
        last_seen_before,
        last_seen_after,
        include_decommissioned,
    )
    keep = (
        None
        if in_sync is None
        else (lambda v: sync_state(v.device, v.status, v.online).in_sync == in_sync)
    )
    items, next_cursor = await store.find(
        db, who.tenant_id, flt, Sort.parse(sort, store.SORTS), limit, cursor, keep
    )
    return PageOf[DevicePublic](items=[public(v) for v in items], next_cursor=next_cursor)


@router.get("/devices/{device_id}")
async def get_device(device_id: DevicePath, db: Db, who: Viewer) -> DevicePublic:
    doc = await store.get(db, who.tenant_id, device_id, live_only=False)
    if doc is None:
        raise NotFound(f"no device {device_id!r}")
    return public(await store.view(db, doc))


@router.patch("/devices/{device_id}")
async def update_device(
    device_id: DevicePath, body: DeviceUpdate, state: State, who: Operator
) -> DevicePublic:
    doc = await _device(state, who.tenant_id, device_id)
    fields: dict[str, Any] = {}
    if body.tags is not None:
        fields["tags"] = sorted(set(body.tags))
    if body.group is not None or body.clear_group:
        await _check_group(state, who.tenant_id, body.group)
        fields["group"] = None if body.clear_group else body.group
    if "group" in fields:
        await config_service.change_device(
            state, who, device_id, cause="group", extra=fields, loc=("body", "group")
        )
    elif fields:
        await _registry_write(state, who.tenant_id, device_id, fields)
    before = doc.model_dump(include=set(fields))
    await audit.record(
        state.db, who, "device.update", f"device:{device_id}", before=before, after=fields
    )
    return await _view(state, who.tenant_id, device_id)


@router.post("/devices/{device_id}/credentials")
async def rotate_credentials(
    device_id: DevicePath, state: State, who: Operator
) -> DeviceCredentials:
    await _device(state, who.tenant_id, device_id)
    password = auth.new_device_password()
    await state.broker_admin.reset_device(device_id, password)  # also disconnects it
    credentials = Credentials(
        password_hash=auth.password_hash(password), rotated_at=datetime.now(UTC)
    )
    # new credentials: a re-provisioned device, whose ordering keys may have started over
    await _registry_write(
        state,
        who.tenant_id,
        device_id,
        {"credentials": credentials.model_dump()},
        reset_keys=True,
    )
    # whatever the old credentials left retained on the config topic is replaced; a config
    # change racing this one is republished by the scheduler's config reconcile
    await config_service.republish(state, await _device(state, who.tenant_id, device_id))
    await audit.record(state.db, who, "device.rotate_credentials", f"device:{device_id}")
    return _credentials(state, device_id, password)


@router.post("/devices/{device_id}/keys/reset")
async def reset_keys(device_id: DevicePath, state: State, who: Operator) -> KeysReset:
    """Accept the device's messages again after its ordering keys went back (a factory
    reset, a device without a clock): from the next key epoch on, any message of it is
    newer than everything stored. Takes effect within the bridge's
    ``OUTPOST_BRIDGE_KNOWN_TTL_S``; until then its messages are counted as skipped
    (``outpost_bridge_skipped{reason="older"}``)."""
    before = await _registry_write(state, who.tenant_id, device_id, {}, reset_keys=True)
    epoch = before.key_epoch + 1
    await audit.record(
        state.db,
        who,
        "device.reset_keys",
        f"device:{device_id}",
        before={"key_epoch": before.key_epoch},
        after={"key_epoch": epoch},
    )
    return KeysReset(device_id=device_id, key_epoch=epoch)


@router.delete("/devices/{device_id}", status_code=status.HTTP_204_NO_CONTENT)
async def decommission(device_id: DevicePath, state: State, who: Operator) -> None:
    """Revoke broker access (and disconnect), clear retained topics; keep history."""
    await _device(state, who.tenant_id, device_id)
    # marked last: if a step fails (503), repeating the DELETE redoes every step
    await state.broker_admin.delete_device(device_id)
    for channel in (Channel.PRESENCE, Channel.CONFIG):
        await state.link.publish(topic(channel, device_id), b"", qos=1, retain=True)
    await _registry_write(state, who.tenant_id, device_id, {"decommissioned_at": datetime.now(UTC)})
    await audit.record(state.db, who, "device.decommission", f"device:{device_id}")


# -- desired config ----------------------------------------------------------------------


def config_public(entry: DeviceConfigDoc) -> DeviceConfigPublic:
    return DeviceConfigPublic(
        device_id=entry.device_id,
        version=entry.version,
        hash=entry.hash,
        config=WifiConfigPublic.model_validate(redact(entry.config)),
        created_at=entry.created_at,
        actor=entry.actor,
        cause=entry.cause,
    )


@router.get("/devices/{device_id}/config", responses={200: {"headers": ETAG}})
async def get_config(
    device_id: DevicePath, db: Db, who: Viewer, response: Response
) -> DeviceConfigPublic:
    """The desired config; a device with none yet answers version 0 (ETag ``"0"``)."""
    doc = await store.get(db, who.tenant_id, device_id)
    if doc is None:
        raise NotFound(f"no device {device_id!r}")
    pointer = doc.desired_config
    if pointer is None:
        response.headers["ETag"] = etag(0)
        return DeviceConfigPublic(
            device_id=device_id,
            version=0,
            hash=None,
            config=None,
            created_at=None,
            actor=None,
            cause=None,
        )
    entry = await store.get_config(db, who.tenant_id, device_id, pointer.version)
    if entry is None:
        raise NotFound(f"config version {pointer.version} not in history")
    response.headers["ETag"] = etag(pointer.version)
    return config_public(entry)


@router.put("/devices/{device_id}/config/overrides", responses={200: {"headers": ETAG}})
async def set_overrides(
    device_id: DevicePath,
    body: OverridesUpdate,
    if_match: IfMatch,
    state: State,
    who: Operator,
    response: Response,
) -> ConfigChange:
    """Replace the device's overrides (If-Match: its config version, required)."""
    expected = parse_if_match(if_match)
    overrides = body.overrides.to_json()
    check_patch(overrides, "overrides")
    outcome = await config_service.change_device(
        state,
        who,
        device_id,
        cause="overrides",
        overrides=overrides,
        if_match=expected,
        loc=("body", "overrides"),
    )
    await audit.record(
        state.db,
        who,
        "device.config.overrides",
        f"device:{device_id}",
        before=outcome.device.overrides,
        after=overrides,
    )
    return _change(outcome, response)


def _change(outcome: config_service.Outcome, response: Response) -> ConfigChange:
    change = outcome.change
    version = change.version if change else _version(outcome.device)
    response.headers["ETag"] = etag(version or 0)
    return ConfigChange(changed=change is not None, version=version, published=outcome.published)


@router.post("/devices/{device_id}/config/rollback", responses={200: {"headers": ETAG}})
async def rollback(
    device_id: DevicePath,
    body: Rollback,
    state: State,
    who: Operator,
    response: Response,
    if_match: OptionalIfMatch = None,
) -> ConfigChange:
    """Make an earlier version's content desired again (as a new version)."""
    expected = parse_if_match(if_match)
    doc = await _device(state, who.tenant_id, device_id)
    config_service.check_if_match(doc, expected)
    entry = await store.get_config(state.db, who.tenant_id, device_id, body.version)
    if entry is None:
        raise NotFound(f"config version {body.version} is not in the kept history")
    rendered = validated(entry.config, f"config version {body.version}", ("body", "version"))
    outcome = await config_service.change_device(
        state,
        who,
        device_id,
        cause=f"rollback:{body.version}",
        rendered=rendered,
        if_match=expected,
    )
    await audit.record(
        state.db,
        who,
        "device.config.rollback",
        f"device:{device_id}",
        before=_version(outcome.device),
        after={"content_of": body.version},
    )
    return _change(outcome, response)


def _version(doc: DeviceDoc) -> int | None:
    return doc.desired_config.version if doc.desired_config else None


@router.get("/devices/{device_id}/config/history")
async def config_history(
    device_id: DevicePath, db: Db, who: Viewer, limit: Limit = DEFAULT, cursor: Cursor = None
) -> PageOf[DeviceConfigPublic]:
    if await store.get(db, who.tenant_id, device_id, live_only=False) is None:
        raise NotFound(f"no device {device_id!r}")
    items, next_cursor = await store.config_history(db, who.tenant_id, device_id, limit, cursor)
    return PageOf[DeviceConfigPublic](
        items=[config_public(d) for d in items], next_cursor=next_cursor
    )
