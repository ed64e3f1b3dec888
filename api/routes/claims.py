"""Provisioning claims (zero-touch provisioning): create, list, read, revoke; and the reset
that lets a serial bind a new device key.

A claim's secret is shown once, at creation; only its sha256 is stored, and it is the
password of the claim's broker account (``claim/<id>``), which may only use the
provisioning channel (:mod:`api.broker_claims`). Devices use it as
:mod:`api.provisioning` describes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, status

from api.broker_claims import create_claim_account, delete_claim_account
from api.claims import new_claim
from api.deps import DEFAULT, Admin, Cursor, Limit, Operator, State, Viewer
from api.errors import InvalidInput, NotFound
from api.expiry import check_expiry
from api.models import ClaimCreate, ClaimCreated, ClaimPublic, PageOf, ProvisioningReset
from api.store import audit, groups
from api.store import claims as store
from api.store.base import Db
from api.store.revisions import retrying
from schemas.documents import ClaimDoc
from schemas.provisioning import claim_username, normalize_serial
from schemas.topics import CLAIM_ID_PATTERN, DEVICE_ID_PATTERN

router = APIRouter(tags=["provisioning"])
ClaimPath = Annotated[str, Path(pattern=CLAIM_ID_PATTERN)]
DevicePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN)]


async def claim_public(db: Db, doc: ClaimDoc) -> ClaimPublic:
    return ClaimPublic(
        id=doc.id,
        name=doc.name,
        username=claim_username(doc.id),
        allow=doc.allow,
        expires_at=doc.expires_at,
        device_limit=doc.device_limit,
        devices=await store.devices_of(db, doc.id),
        group=doc.group,
        tags=doc.tags,
        created_at=doc.created_at,
        revoked_at=doc.revoked_at,
    )


@router.post("/claims", status_code=status.HTTP_201_CREATED)
async def create_claim(body: ClaimCreate, state: State, who: Admin) -> ClaimCreated:
    """A claim and its broker account; the response holds the secret, shown only here."""
    now = datetime.now(UTC)
    check_expiry(body.expires_at, now)
    if body.group is not None and await groups.get(state.db, who.tenant_id, body.group) is None:
        raise InvalidInput(f"group: no group {body.group!r}", loc=("body", "group"))
    made = new_claim()
    doc = ClaimDoc(
        id=made.claim_id,
        tenant_id=who.tenant_id,
        name=body.name,
        secret_hash=made.hash,
        allow=sorted({normalize_serial(s) for s in body.allow}) if body.allow is not None else None,
        expires_at=body.expires_at,
        device_limit=body.device_limit,
        group=body.group,
        tags=sorted(set(body.tags)),
        created_at=now,
        created_by=who.token_id,
    )
    await store.insert(state.db, doc)
    try:
        await create_claim_account(state.link, made.claim_id, made.secret)
    except BaseException:
        await store.delete(state.db, made.claim_id)
        raise
    summary = doc.model_dump(include={"name", "expires_at", "device_limit", "group", "tags"})
    summary["allow"] = len(doc.allow) if doc.allow is not None else None
    await audit.record(state.db, who, "claim.create", f"claim:{doc.id}", after=summary)
    public = await claim_public(state.db, doc)
    return ClaimCreated(**public.model_dump(), secret=made.secret)


@router.get("/claims")
async def list_claims(
    state: State, who: Viewer, limit: Limit = DEFAULT, cursor: Cursor = None
) -> PageOf[ClaimPublic]:
    page = await store.list_claims(state.db, who.tenant_id, limit, cursor)
    items = [await claim_public(state.db, ClaimDoc.model_validate(d)) for d in page.items]
    return PageOf[ClaimPublic](items=items, next_cursor=page.next_cursor)


@router.get("/claims/{claim_id}")
async def get_claim(claim_id: ClaimPath, state: State, who: Viewer) -> ClaimPublic:
    doc = await store.get(state.db, claim_id, who.tenant_id)
    if doc is None:
        raise NotFound(f"no claim {claim_id!r}")
    return await claim_public(state.db, doc)


@router.delete("/claims/{claim_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_claim(claim_id: ClaimPath, state: State, who: Admin) -> None:
    """Refuse every further request of the claim and delete its broker account (which
    disconnects whoever uses it). Devices it provisioned keep their own accounts."""
    doc = await store.get(state.db, claim_id, who.tenant_id)
    if doc is None:
        raise NotFound(f"no claim {claim_id!r}")
    # marked first: from now on the api refuses it, even if the broker step fails (503,
    # and repeating the DELETE redoes that step)
    await store.revoke(state.db, who.tenant_id, claim_id, datetime.now(UTC))
    await delete_claim_account(state.link, claim_id)
    await audit.record(state.db, who, "claim.revoke", f"claim:{claim_id}", after={"revoked": True})


@router.post("/devices/{device_id}/provisioning/reset")
async def reset_provisioning(
    device_id: DevicePath, state: State, who: Operator
) -> ProvisioningReset:
    """Unbind the device key of a provisioned device: the next provisioning request with
    its serial, signed by any key, binds that key and gets this device with a new
    password (a replaced or wiped device). Until then the device keeps working."""

    async def attempt() -> ProvisioningReset | None:
        binding = await store.binding_of_device(state.db, who.tenant_id, device_id)
        if binding is None:
            raise NotFound(f"no provisioned device {device_id!r}")
        if not await store.set_identity_key(state.db, binding, None):
            return None
        return ProvisioningReset(device_id=device_id, serial=binding.serial)

    done = await retrying(attempt, f"the provisioning of {device_id!r}")
    await audit.record(
        state.db,
        who,
        "device.provisioning_reset",
        f"device:{device_id}",
        after={"serial": done.serial},
    )
    return done
