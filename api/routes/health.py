"""/healthz (process up), /readyz (MongoDB ping and MQTT session, each time-bounded),
/metrics (which runs the readiness checks first, so ``outpost_dependency_up`` is fresh)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from outpost.health import ReadinessChecks

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready: `failing` names why"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready when MongoDB answers a ping and the broker connection is up, each within
    ``OUTPOST_HTTP_READY_TIMEOUT_S``; a 503 names each failing dependency."""
    readiness = await _checks(request).run()
    return JSONResponse(readiness.body(), status_code=readiness.status)


def _checks(request: Request) -> ReadinessChecks:
    checks: ReadinessChecks = request.app.state.readiness
    return checks


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    await _checks(request).run()
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
