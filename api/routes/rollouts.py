"""Rollout definitions (schemas.rollouts); the scheduler runs them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import DEFAULT, Cursor, Db, Limit, Operator, Viewer
from api.errors import Conflict, InvalidInput, NotFound
from api.store import audit
from api.store import firmware as firmware_store
from api.store import rollouts as store
from api.store.base import new_id
from api.store.revisions import retrying
from api.store.rollouts import RolloutView
from schemas.rollouts import RolloutSpec, RolloutStatus
from schemas.waves import gated, plan_waves

router = APIRouter(tags=["rollouts"])
RolloutId = Annotated[str, Path(pattern=r"^[0-9a-f]{24}$")]


class RolloutPublic(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    status: RolloutStatus
    spec: dict[str, Any]
    progress: dict[str, Any]


class RolloutPage(BaseModel):
    items: list[RolloutPublic]
    next_cursor: str | None


class Progress(BaseModel):
    status: RolloutStatus
    executions: dict[str, int]
    waves: dict[str, dict[str, int]]
    scheduler: dict[str, Any]


class DryRunWave(BaseModel):
    wave: int
    earliest_start: datetime = Field(
        description="Lower bound: gated waves also wait for the previous wave's success, "
        "and sends wait for maintenance windows"
    )
    device_ids: list[str]


class DryRun(BaseModel):
    targeted: int
    gated: bool = Field(description="Waves wait for the previous wave's success condition")
    waves: list[DryRunWave]


def public(view: RolloutView) -> RolloutPublic:
    progress = view.progress.progress.model_dump(mode="json") if view.progress else {}
    return RolloutPublic(
        id=view.rollout.id,
        status=view.status(datetime.now(UTC)),
        spec=view.rollout.spec.model_dump(mode="json"),
        progress=progress,
    )


async def _check_firmware(db: Db, tenant_id: str, spec: RolloutSpec) -> None:
    fw = await firmware_store.get(db, tenant_id, spec.firmware.id)
    if fw is None or fw.status != "ready":
        raise InvalidInput(
            f"firmware.id: no uploaded firmware {spec.firmware.id!r}",
            loc=("body", "firmware", "id"),
        )
    if fw.version != spec.firmware.version:
        raise InvalidInput(
            f"firmware.version: image {spec.firmware.id} is {fw.version}",
            loc=("body", "firmware", "version"),
        )


@router.post("/rollouts", status_code=status.HTTP_201_CREATED)
async def create_rollout(spec: RolloutSpec, db: Db, who: Operator) -> RolloutPublic:
    """Create a rollout; 409 if an active rollout holds one of the targeted devices (one
    active rollout per device: a unique claim per device, :func:`store.claim_devices`)."""
    await _check_firmware(db, who.tenant_id, spec)
    ids = await store.target_ids(db, who.tenant_id, spec.target)
    if not ids:
        raise InvalidInput("target: matches no device", loc=("body", "target"))
    rollout_id = new_id()
    held = await store.claim_devices(db, who.tenant_id, rollout_id, ids)
    if held is not None:
        raise Conflict(
            f"{len(held.device_ids)} devices (e.g. {held.device_ids[:5]}) are already "
            f"targeted by active rollout {held.rollout_id}"
        )
    try:
        doc = await store.create(db, who.tenant_id, spec, who.token_id, rollout_id)
    except BaseException:
        await asyncio.shield(store.release_devices(db, rollout_id, ids))
        raise
    await audit.record(
        db,
        who,
        "rollout.create",
        f"rollout:{doc.id}",
        after={"firmware": spec.firmware.id, "devices": len(ids)},
    )
    return public(RolloutView(doc, None))


def dry_run_waves(spec: RolloutSpec, ids: list[str], now: datetime) -> list[DryRunWave]:
    """The scheduler's own wave sizes (:func:`scheduler.waves.plan_waves`) over the target
    in id order; a wave starts no earlier than ``max_per_minute`` lets the sends before it
    go out (exponential: one wave per minute)."""
    start = max(now, spec.schedule.start_at or now)
    waves, done = [], 0
    for n, size in enumerate(plan_waves(spec, len(ids))):
        minutes = n if not gated(spec) else done // spec.max_per_minute
        waves.append(
            DryRunWave(
                wave=n + 1,
                earliest_start=start + timedelta(minutes=minutes),
                device_ids=ids[done : done + size],
            )
        )
        done += size
    return waves


@router.post("/rollouts/dry-run")
async def dry_run(spec: RolloutSpec, db: Db, who: Viewer) -> DryRun:
    """Which devices would be in which wave, and the earliest each could start."""
    ids = await store.target_ids(db, who.tenant_id, spec.target)
    return DryRun(
        targeted=len(ids), gated=gated(spec), waves=dry_run_waves(spec, ids, datetime.now(UTC))
    )


@router.get("/rollouts")
async def list_rollouts(
    db: Db, who: Viewer, limit: Limit = DEFAULT, cursor: Cursor = None
) -> RolloutPage:
    items, next_cursor = await store.find(db, who.tenant_id, limit, cursor)
    return RolloutPage(items=[public(v) for v in items], next_cursor=next_cursor)


@router.get("/rollouts/{rollout_id}")
async def get_rollout(rollout_id: RolloutId, db: Db, who: Viewer) -> RolloutPublic:
    view = await store.get(db, who.tenant_id, rollout_id)
    if view is None:
        raise NotFound(f"no rollout {rollout_id!r}")
    return public(view)


@router.get("/rollouts/{rollout_id}/progress")
async def progress(rollout_id: RolloutId, db: Db, who: Viewer) -> Progress:
    view = await store.get(db, who.tenant_id, rollout_id)
    if view is None:
        raise NotFound(f"no rollout {rollout_id!r}")
    counts = await store.execution_counts(db, who.tenant_id, rollout_id)
    waves = {k.removeprefix("wave:"): dict(v) for k, v in counts.items() if k != "all"}
    return Progress(
        status=view.status(datetime.now(UTC)),
        executions=dict(counts["all"]),
        waves=waves,
        scheduler=public(view).progress,
    )


_TRANSITIONS: dict[str, tuple[list[RolloutStatus], str]] = {
    "pause": ([RolloutStatus.RUNNING, RolloutStatus.SCHEDULED], "paused"),
    "resume": ([RolloutStatus.PAUSED], "running"),
    "cancel": (
        [RolloutStatus.RUNNING, RolloutStatus.SCHEDULED, RolloutStatus.PAUSED],
        "canceled",
    ),
}


async def _transition(db: Db, who: Any, rollout_id: str, action: str) -> RolloutPublic:
    allowed, requested = _TRANSITIONS[action]

    async def attempt() -> bool | None:
        view = await store.get(db, who.tenant_id, rollout_id)
        if view is None:
            raise NotFound(f"no rollout {rollout_id!r}")
        current = view.status(datetime.now(UTC))
        if current not in allowed:
            raise Conflict(f"cannot {action} a rollout that is {current.value}")
        return True if await store.set_control(db, view.rollout, requested) else None

    await retrying(attempt, f"rollout {rollout_id}")
    await audit.record(
        db, who, f"rollout.{action}", f"rollout:{rollout_id}", after={"requested": requested}
    )
    view = await store.get(db, who.tenant_id, rollout_id)
    assert view is not None
    return public(view)


@router.post("/rollouts/{rollout_id}/pause")
async def pause(rollout_id: RolloutId, db: Db, who: Operator) -> RolloutPublic:
    return await _transition(db, who, rollout_id, "pause")


@router.post("/rollouts/{rollout_id}/resume")
async def resume(rollout_id: RolloutId, db: Db, who: Operator) -> RolloutPublic:
    return await _transition(db, who, rollout_id, "resume")


@router.post("/rollouts/{rollout_id}/cancel")
async def cancel(rollout_id: RolloutId, db: Db, who: Operator) -> RolloutPublic:
    return await _transition(db, who, rollout_id, "cancel")
