"""provisioning_claims, claim_slots, serial_bindings and provision_nonces (api).

Every exclusive step is a unique-key insert, so it holds across api instances without
transactions: a request's nonce is answered once (``provision_nonces``), a serial becomes
one device (``serial_bindings``, ``_id`` = tenant and serial), and a claim's device limit
is a fixed set of slots (``claim_slots``, ``_id`` = claim and slot number) of which each new
device inserts one. Changing a binding's key (an admin reset, the rebind after it) is a
revision (:mod:`api.store.revisions`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.errors import DuplicateKeyError

from api.pagination import Sort
from api.store.base import Db, Page, page
from api.store.revisions import Revision, revise
from schemas.documents import (
    CLAIM_SLOTS,
    CLAIMS,
    PROVISION_NONCES,
    SERIAL_BINDINGS,
    ClaimDoc,
    SerialBindingDoc,
)


async def insert(db: Db, claim: ClaimDoc) -> None:
    await db[CLAIMS].insert_one(claim.to_mongo())


async def get(db: Db, claim_id: str, tenant_id: str | None = None) -> ClaimDoc | None:
    query = {"_id": claim_id} | ({"tenant_id": tenant_id} if tenant_id else {})
    raw = await db[CLAIMS].find_one(query)
    return ClaimDoc.model_validate(raw) if raw else None


async def list_claims(db: Db, tenant_id: str, limit: int, cursor: str | None) -> Page:
    return await page(db[CLAIMS], {"tenant_id": tenant_id}, Sort("_id"), limit, cursor)


async def revoke(db: Db, tenant_id: str, claim_id: str, now: datetime) -> None:
    # revoked_at only ever goes from None to a time: a second revoke matches nothing
    await db[CLAIMS].update_one(
        {"_id": claim_id, "tenant_id": tenant_id, "revoked_at": None},
        {"$set": {"revoked_at": now}},
    )


async def used_slots(db: Db, claim_id: str) -> int:
    return await db[CLAIM_SLOTS].count_documents({"claim_id": claim_id})


async def take_slot(db: Db, claim_id: str, limit: int, serial: str) -> str | None:
    """Insert the first free slot of the claim's ``limit``; its id, or None when all are
    taken. Concurrent requests each win a different slot or none."""
    start = await used_slots(db, claim_id)
    for n in range(start, limit):
        slot_id = f"{claim_id}:{n:07d}"
        doc = {"_id": slot_id, "claim_id": claim_id, "serial": serial, "at": datetime.now(UTC)}
        try:
            await db[CLAIM_SLOTS].insert_one(doc)
        except DuplicateKeyError:
            continue
        return slot_id
    return None


async def free_slot(db: Db, slot_id: str) -> None:
    """Give back a slot this request inserted and did not use (it lost the serial race)."""
    await db[CLAIM_SLOTS].delete_one({"_id": slot_id})


async def first_use(db: Db, claim_id: str, nonce: str) -> bool:
    """Record a request's nonce; False if it was seen before (a replay)."""
    try:
        await db[PROVISION_NONCES].insert_one(
            {"_id": f"{claim_id}:{nonce}", "claim_id": claim_id, "at": datetime.now(UTC)}
        )
    except DuplicateKeyError:
        return False
    return True


def binding_id(tenant_id: str, serial: str) -> str:
    return f"{tenant_id}:{serial}"


async def binding(db: Db, tenant_id: str, serial: str) -> SerialBindingDoc | None:
    raw = await db[SERIAL_BINDINGS].find_one({"_id": binding_id(tenant_id, serial)})
    return SerialBindingDoc.model_validate(raw) if raw else None


async def binding_of_device(db: Db, tenant_id: str, device_id: str) -> SerialBindingDoc | None:
    raw = await db[SERIAL_BINDINGS].find_one({"tenant_id": tenant_id, "device_id": device_id})
    return SerialBindingDoc.model_validate(raw) if raw else None


async def bind(db: Db, doc: SerialBindingDoc) -> bool:
    """Insert a serial's first binding; False if another request bound it first."""
    try:
        await db[SERIAL_BINDINGS].insert_one(doc.to_mongo())
    except DuplicateKeyError:
        return False
    return True


async def set_identity_key(db: Db, doc: SerialBindingDoc, identity_key: str | None) -> bool:
    """The binding's next revision with ``identity_key``; False if it moved meanwhile."""
    update = {"$set": {"identity_key": identity_key, "bound_at": datetime.now(UTC)}}
    return doc.id in await revise(db, SERIAL_BINDINGS, [Revision(doc.id, doc.rev, update)])


async def devices_of(db: Db, claim_id: str) -> int:
    """Serials bound through the claim (one device each)."""
    return await db[SERIAL_BINDINGS].count_documents({"claim_id": claim_id})


async def delete(db: Db, claim_id: str) -> None:
    """Undo an insert whose broker account could not be made."""
    await db[CLAIMS].delete_one({"_id": claim_id})
