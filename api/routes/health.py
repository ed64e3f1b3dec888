"""/healthz (process up), /readyz (Mongo ping + MQTT connected), /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import PyMongoError

from api.deps import State

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready"}})
async def readyz(state: State) -> JSONResponse:
    checks = {"mongo": await _mongo_ok(state), "mqtt": state.link.connected}
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


async def _mongo_ok(state: State) -> bool:
    try:
        await state.db.db.command("ping")
    except PyMongoError:
        return False
    return True


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
