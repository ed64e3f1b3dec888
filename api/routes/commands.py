"""Device commands: one device (published at once), or a group or tag selection (sent by
the scheduler at a per-minute cap); each one read back with the device's answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from api import command_service as service
from api.deps import DEFAULT, Cursor, Limit, Operator, State, Viewer
from api.errors import InvalidInput, NotFound
from api.models import BulkCommandCreate, BulkCommandPublic, CommandCreate, CommandPublic, PageOf
from api.state import AppState
from api.store import audit
from api.store import commands as store
from api.store import devices as device_store
from api.store.base import new_id
from api.store.rollouts import target_ids
from schemas import commands as c
from schemas.documents import CommandBulkDoc
from schemas.rollouts import Target
from schemas.topics import DEVICE_ID_PATTERN

router = APIRouter(tags=["commands"])
DevicePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN)]
CommandPath = Annotated[str, Path(pattern=r"^[0-9a-f]{24}$")]
Wait = Annotated[
    float,
    Query(
        ge=0,
        le=5,
        description="Seconds (at most 5) to wait for the device's answer: 200 with it when "
        "it came in time, else 202 (then GET the command)",
    ),
]


@router.post(
    "/devices/{device_id}/commands",
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": CommandPublic, "description": "The device answered in time"}},
)
async def send_command(
    device_id: DevicePath,
    body: CommandCreate,
    state: State,
    who: Operator,
    response: Response,
    wait: Wait = 0,
) -> CommandPublic:
    """Send a command over the device's own session. An offline device gets it when it
    comes back, unless it expired first; an expired command is never run."""
    if await device_store.get(state.db, who.tenant_id, device_id) is None:
        raise NotFound(f"no device {device_id!r}")
    args = service.checked_args(body.name, dict(body.args))
    doc = service.new_command(who, device_id, body.name, args, datetime.now(UTC), body.expires_in_s)
    await store.insert(state.db, doc)
    await audit.record(
        state.db,
        who,
        "command.send",
        f"device:{device_id}",
        after={"command_id": doc.id, "name": doc.name, "args": args},
    )
    doc = await service.publish(state, doc)
    if wait > 0 and await service.wait_for_result(state, doc.id, wait):
        response.status_code = status.HTTP_200_OK
    return (await service.publics(state, [doc]))[0]


@router.get("/devices/{device_id}/commands/{command_id}")
async def get_command(
    device_id: DevicePath, command_id: CommandPath, state: State, who: Viewer
) -> CommandPublic:
    """One command with its status and the device's answer; a log result carries a
    short-lived presigned GET URL of the uploaded log."""
    doc = await store.get(state.db, who.tenant_id, device_id, command_id)
    if doc is None:
        raise NotFound(f"no command {command_id!r} of device {device_id!r}")
    return (await service.publics(state, [doc]))[0]


@router.get("/devices/{device_id}/commands")
async def list_commands(
    device_id: DevicePath, state: State, who: Viewer, limit: Limit = DEFAULT, cursor: Cursor = None
) -> PageOf[CommandPublic]:
    """The device's commands, newest first."""
    if await device_store.get(state.db, who.tenant_id, device_id, live_only=False) is None:
        raise NotFound(f"no device {device_id!r}")
    docs, next_cursor = await store.of_device(state.db, who.tenant_id, device_id, limit, cursor)
    return PageOf[CommandPublic](items=await service.publics(state, docs), next_cursor=next_cursor)


@router.post("/commands", status_code=status.HTTP_202_ACCEPTED)
async def send_bulk(body: BulkCommandCreate, state: State, who: Operator) -> BulkCommandPublic:
    """One command to every live device of a group or tag selection (or listed ids); the
    scheduler sends them, at most ``max_per_minute`` per minute, each over its device's
    own session, until the command expires."""
    try:
        target = Target(
            group=body.target.group,
            tags=frozenset(body.target.tags),
            device_ids=frozenset(body.target.device_ids),
        )
    except ValueError:
        raise InvalidInput(
            "target: name a group, tags or device ids", loc=("body", "target")
        ) from None
    ids = await target_ids(state.db, who.tenant_id, target)
    if not ids:
        raise InvalidInput("target: matches no device", loc=("body", "target"))
    args = service.checked_args(body.name, dict(body.args))
    now = datetime.now(UTC)
    bulk_id = new_id()
    docs = [
        service.new_command(who, d, body.name, args, now, body.expires_in_s, bulk_id) for d in ids
    ]
    bulk = CommandBulkDoc(
        id=bulk_id,
        tenant_id=who.tenant_id,
        name=body.name,
        args=args,
        target=body.target.model_dump(mode="json", exclude_defaults=True),
        devices=len(ids),
        max_per_minute=body.max_per_minute,
        created_at=now,
        expires_at=docs[0].expires_at,
        created_by=who.token_id,
    )
    entries = [
        audit.entry(
            who,
            "command.send",
            f"device:{d.device_id}",
            after={"command_id": d.id, "name": d.name, "args": args, "bulk_id": bulk_id},
        )
        for d in docs
    ]
    await store.insert_bulk(state.db, bulk, docs, entries)
    state.metrics.commands.labels(command=c.label(body.name), result="queued").inc(len(docs))
    return await _bulk_public(state, bulk)


@router.get("/commands/{bulk_id}")
async def get_bulk(bulk_id: CommandPath, state: State, who: Viewer) -> BulkCommandPublic:
    """A group command and how many of its commands are in each status."""
    bulk = await store.get_bulk(state.db, who.tenant_id, bulk_id)
    if bulk is None:
        raise NotFound(f"no group command {bulk_id!r}")
    return await _bulk_public(state, bulk)


async def _bulk_public(state: AppState, bulk: CommandBulkDoc) -> BulkCommandPublic:
    docs = await store.of_bulk(state.db, bulk.id)
    counts: dict[str, int] = {}
    for one in await service.publics(state, docs):
        counts[one.status] = counts.get(one.status, 0) + 1
    return BulkCommandPublic(
        id=bulk.id,
        name=bulk.name,
        args=bulk.args,
        devices=bulk.devices,
        max_per_minute=bulk.max_per_minute,
        created_at=bulk.created_at,
        expires_at=bulk.expires_at,
        statuses=counts,
    )
