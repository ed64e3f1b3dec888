"""Groups and their config templates; a template change re-renders every member."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status
from pymongo.errors import DuplicateKeyError

from api import config_service
from api.config_render import check_patch
from api.config_service import Change
from api.deps import DEFAULT, Cursor, Db, Limit, Operator, State, Viewer
from api.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from api.models import GroupChange, GroupCreate, GroupPublic, PageOf, TemplateUpdate
from api.routes.devices import ETAG, IfMatch, etag, parse_if_match
from api.store import audit
from api.store import devices as device_store
from api.store import groups as store
from schemas.documents import DeviceDoc, GroupDoc
from schemas.wifi import WifiConfigPatchPublic, redact

router = APIRouter(tags=["groups"])
GroupPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


def public(doc: GroupDoc) -> GroupPublic:
    return GroupPublic(
        name=doc.name,
        template=WifiConfigPatchPublic.model_validate(redact(doc.template)),
        version=doc.version,
        updated_at=doc.updated_at,
    )


@router.post("/groups", status_code=status.HTTP_201_CREATED)
async def create_group(body: GroupCreate, db: Db, who: Operator) -> GroupPublic:
    template = body.template.to_json()
    check_patch(template, "template")
    try:
        doc = await store.create(db, who.tenant_id, body.name, template)
    except DuplicateKeyError:
        raise Conflict(f"group {body.name!r} exists") from None
    await audit.record(db, who, "group.create", f"group:{body.name}", after=template)
    return public(doc)


@router.get("/groups")
async def list_groups(
    db: Db, who: Viewer, limit: Limit = DEFAULT, cursor: Cursor = None
) -> PageOf[GroupPublic]:
    items, next_cursor = await store.find(db, who.tenant_id, limit, cursor)
    return PageOf[GroupPublic](items=[public(d) for d in items], next_cursor=next_cursor)


@router.get("/groups/{name}", responses={200: {"headers": ETAG}})
async def get_group(name: GroupPath, db: Db, who: Viewer, response: Response) -> GroupPublic:
    doc = await store.get(db, who.tenant_id, name)
    if doc is None:
        raise NotFound(f"no group {name!r}")
    response.headers["ETag"] = etag(doc.version)
    return public(doc)


@router.put("/groups/{name}/template", responses={200: {"headers": ETAG}})
async def set_template(
    name: GroupPath,
    body: TemplateUpdate,
    if_match: IfMatch,
    state: State,
    who: Operator,
    response: Response,
) -> GroupChange:
    """Replace the template (If-Match: group version, required) and re-render all member
    devices."""
    doc = await store.get(state.db, who.tenant_id, name)
    if doc is None:
        raise NotFound(f"no group {name!r}")
    expected = parse_if_match(if_match)
    if expected is not None and expected != doc.version:
        raise PreconditionFailed(f"group version is {doc.version}, If-Match said {expected}")
    template = body.template.to_json()
    check_patch(template, "template")
    members = await device_store.in_group(state.db, who.tenant_id, name)
    plan_members(members, template)  # all valid, or nothing is written
    if not await store.replace_template(state.db, doc, template):
        raise PreconditionFailed("the group changed meanwhile; read it and retry")
    moved, published = await config_service.change_members(
        state, who, name, template, f"group:{name}"
    )
    await audit.record(
        state.db, who, "group.template", f"group:{name}", before=doc.template, after=template
    )
    updated = await store.get(state.db, who.tenant_id, name)
    response.headers["ETag"] = etag((updated or doc).version)
    return GroupChange(
        group=public(updated or doc), devices_changed=len(moved), devices_published=published
    )


def plan_members(members: list[DeviceDoc], template: dict[str, Any]) -> list[Change]:
    """Every member's change; 422 naming the devices whose effective config is invalid."""
    changes, invalid = [], []
    for device in members:
        try:
            change = config_service.plan(device, template, loc=("body", "template"))
        except InvalidInput as exc:
            invalid.append(exc)
            continue
        if change is not None:
            changes.append(change)
    if invalid:
        more = f" (and {len(invalid) - 3} more)" if len(invalid) > 3 else ""
        errors = [e for exc in invalid for e in exc.errors][:20]
        detail = "template: " + "; ".join(exc.detail for exc in invalid[:3]) + more
        raise InvalidInput(detail, errors=errors)
    return changes


@router.delete("/groups/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_group(name: GroupPath, db: Db, who: Operator) -> None:
    if await store.get(db, who.tenant_id, name) is None:
        raise NotFound(f"no group {name!r}")
    members = await device_store.count_in_group(db, who.tenant_id, name)
    if members:
        raise Conflict(f"group {name!r} still has {members} devices")
    await store.delete(db, who.tenant_id, name)
    await audit.record(db, who, "group.delete", f"group:{name}")
