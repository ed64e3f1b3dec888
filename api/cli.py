"""``outpost api`` (serve the REST api with uvicorn) and ``outpost admin`` (bootstrap).

uvicorn handles SIGTERM gracefully: it stops accepting, finishes in-flight requests,
then runs the lifespan's shutdown (closing the Mongo, MQTT and S3 clients).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated

import typer

from api import auth
from api.broker_admin import BrokerAdmin
from api.broker_link import BrokerLink
from api.errors import BrokerError
from api.settings import ApiSettings
from api.store import tenants
from outpost import logs, store
from outpost.settings import (
    HttpSettings,
    MongoSettings,
    MqttSettings,
    S3Settings,
    SettingsError,
    load,
)
from schemas.documents import DEVICES

api_app = typer.Typer(help="Serve the admins' REST api.", pretty_exceptions_enable=False)
admin_app = typer.Typer(
    help="Bootstrap tenants and API tokens; refresh device accounts' ACLs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_LOG = logging.getLogger("outpost.api")
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@api_app.callback(invoke_without_command=True)
def serve(
    log_level: str | None = typer.Option(None, help="Log level (default: OUTPOST_LOG_LEVEL, INFO)"),
) -> None:
    """Run the api until SIGTERM."""
    # here, not at the top: the `outpost admin` commands need neither (2 s less to start)
    import uvicorn

    from api.app import Settings, create_app

    logs.configure(log_level)
    try:
        settings = Settings(
            mqtt=load(MqttSettings),
            mongo=load(MongoSettings),
            s3=load(S3Settings),
            api=load(ApiSettings),
            http=load(HttpSettings),
        )
        http = settings.http
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    app = create_app(settings, _LOG)
    uvicorn.run(app, host=http.host, port=http.port, log_config=None, access_log=False)


async def _create_tenant(tenant_id: str, name: str) -> None:
    client = store.client(load(MongoSettings))
    try:
        db = store.Store(client[load(MongoSettings).database])
        await tenants.create_tenant(db, tenant_id, name)
    finally:
        await client.close()


async def _create_token(tenant_id: str, role: auth.Role, name: str) -> str | None:
    settings = load(MongoSettings)
    client = store.client(settings)
    try:
        db = store.Store(client[settings.database])
        if await tenants.get_tenant(db, tenant_id) is None:
            return None
        token = auth.new_token()
        await tenants.create_token(db, token, tenant_id, role, name, created_by=None)
        return token.secret
    finally:
        await client.close()


async def _refresh_acls() -> int:
    """Every live device's broker role gets today's ACL, through the api's broker link."""
    settings = load(MongoSettings)
    link = BrokerLink(load(MqttSettings), _LOG, timeout=load(ApiSettings).broker_timeout_s)
    running = asyncio.create_task(link.run(), name="refresh-acls broker link")
    client = store.client(settings)
    try:
        found = client[settings.database][DEVICES].find({"decommissioned_at": None}, {"_id": 1})
        ids = [str(d["_id"]) for d in await found.to_list(None)]
        return await BrokerAdmin(link).refresh_acls(ids)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await client.close()


@admin_app.command("refresh-acls")
def refresh_acls() -> None:
    """Give every registered device account today's broker ACL, in place (no disconnect,
    no new password): run it once after an upgrade that added device topics (device
    commands did). Credential rotation does the same for one device."""
    try:
        added = asyncio.run(_refresh_acls())
    except (SettingsError, BrokerError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{added} ACL entries added")


@admin_app.command("create-tenant")
def create_tenant(
    tenant_id: str = typer.Argument(..., help="[a-z0-9-], 2-63 chars"),
    name: str = typer.Option("", help="Display name"),
) -> None:
    """Create a tenant."""
    if not TENANT_ID.fullmatch(tenant_id):
        raise _fail(f"tenant id must match {TENANT_ID.pattern}")
    try:
        asyncio.run(_create_tenant(tenant_id, name or tenant_id))
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"tenant {tenant_id} created")


@admin_app.command("create-token")
def create_token(
    tenant: str = typer.Option(..., help="Tenant id"),
    role: Annotated[auth.Role, typer.Option(help="admin|operator|viewer")] = auth.Role.ADMIN,
    name: str = typer.Option("bootstrap", help="What the token is for"),
) -> None:
    """Create an API token and print it once (only its hash is stored)."""
    try:
        secret = asyncio.run(_create_token(tenant, role, name))
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    if secret is None:
        raise _fail(f"no tenant {tenant!r}; run outpost admin create-tenant first")
    typer.echo(secret)
