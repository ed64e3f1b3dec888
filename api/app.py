"""``create_app(settings)``: the FastAPI application, with a lifespan owning every client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from api import problems
from api.broker_admin import BrokerAdmin, DeviceAccounts, ExternalAccounts
from api.broker_link import BrokerLink
from api.firmware_store import FirmwareStore, s3_client
from api.metrics import ApiMetrics
from api.middleware import BodyLimit, RequestMetrics
from api.openapi_links import add_links
from api.problems import openapi_responses
from api.provisioning import Provisioner
from api.routes import (
    audit,
    claims,
    commands,
    devices,
    firmware,
    groups,
    health,
    ops,
    rollouts,
    tokens,
)
from api.settings import ApiSettings
from api.state import AppState
from api.store.indexes import ensure_indexes
from outpost import store
from outpost.health import ReadinessChecks, flag_check, ping_check
from outpost.settings import HttpSettings, MongoSettings, MqttSettings, S3Settings

ERRORS = openapi_responses(400, 401, 403, 404, 409, 412, 413, 422, 428, 503)


@dataclass(frozen=True)
class Settings:
    mqtt: MqttSettings
    mongo: MongoSettings
    s3: S3Settings
    api: ApiSettings = field(default_factory=ApiSettings)
    http: HttpSettings = field(default_factory=HttpSettings)


def _lifespan(settings: Settings, metrics: ApiMetrics, logger: logging.Logger) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, AppState]]:
        client = store.client(
            settings.mongo,
            **settings.mongo.client_timeouts(settings.api.mongo_timeout_s, fail_fast=True),
        )
        link = BrokerLink(settings.mqtt, logger, timeout=settings.api.broker_timeout_s)
        s3 = s3_client(settings.s3)
        images = FirmwareStore(
            s3,
            settings.s3.bucket,
            part_bytes=settings.api.upload_part_bytes,
            max_bytes=settings.api.max_firmware_bytes,
        )
        db = store.Store(
            client[settings.mongo.database], concurrency=settings.mongo.write_concurrency
        )
        state = AppState(db, link, _accounts(settings, link), images, metrics, settings.api, logger)
        provisioner = Provisioner(state)
        link.listen(provisioner.subscription, provisioner.offer)
        tasks = [
            asyncio.create_task(link.run(), name="api-broker-link"),
            asyncio.create_task(provisioner.run(), name="api-provisioning"),
        ]
        try:
            await ensure_indexes(db)
            app.state.readiness = ReadinessChecks(
                {
                    "mongo": ping_check(lambda: db.db.command("ping")),
                    "mqtt": flag_check(lambda: link.connected, "not connected to the broker"),
                },
                settings.http.ready_timeout_s,
                metrics.dependency_up,
            )
            yield {"app": state}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
            s3.close()

    return lifespan


def _accounts(settings: Settings, link: BrokerLink) -> DeviceAccounts:
    if settings.api.broker_accounts == "external":
        return ExternalAccounts()
    return BrokerAdmin(link)


def create_app(settings: Settings, logger: logging.Logger | None = None) -> FastAPI:
    logger = logger or logging.getLogger("outpost.api")
    metrics = ApiMetrics()
    app = FastAPI(
        title="Outpost API",
        version="1",
        lifespan=_lifespan(settings, metrics, logger),
        docs_url="/docs",
        redoc_url=None,
        generate_unique_id_function=_operation_id,
    )
    app.state.metrics = metrics
    problems.install(app, logger)
    app.add_middleware(BodyLimit, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.include_router(health.router)
    for module in (tokens, audit, devices, commands, groups, firmware, rollouts, ops, claims):
        app.include_router(module.router, responses=ERRORS)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _operation_id(route: APIRoute) -> str:
    """The route function's name (``register``, ``get_config``): what a generated client
    calls its methods, and what the document's links name."""
    return route.name


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (problems.Problem, problems.ValidationProblem):
            found = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(found.pop("$defs", {}))
            components[model.__name__] = found
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        schema["security"] = [{"bearer": []}]
        for operations in schema["paths"].values():
            for operation in operations.values():
                if "health" in operation.get("tags", ()):
                    operation["security"] = []  # probes need no token
        add_links(schema)
        app.openapi_schema = schema
    return app.openapi_schema
