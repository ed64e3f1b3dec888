"""``outpost admin create-tenant`` / ``create-token`` bootstrap a working admin token."""

from __future__ import annotations

import secrets

import pytest
from pymongo import MongoClient
from typer.testing import CliRunner

from api.auth import Role, token_hash
from cli.main import app

pytestmark = pytest.mark.integration


def test_bootstrap_tenant_and_token(mongo, monkeypatch, tmp_path):
    database = f"cli_{secrets.token_hex(4)}"
    monkeypatch.chdir(tmp_path)  # no .env / .outpost/dev.env from the work tree
    env = {"OUTPOST_MONGO_URL": mongo.url, "OUTPOST_MONGO_DATABASE": database}
    runner = CliRunner()
    created = runner.invoke(app, ["admin", "create-tenant", "acme"], env=env)
    assert created.exit_code == 0, created.output
    bad = runner.invoke(app, ["admin", "create-tenant", "Bad Id"], env=env)
    assert bad.exit_code == 2
    missing = runner.invoke(app, ["admin", "create-token", "--tenant", "nope"], env=env)
    assert missing.exit_code == 2
    issued = runner.invoke(
        app, ["admin", "create-token", "--tenant", "acme", "--role", "operator"], env=env
    )
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip()
    client: MongoClient = MongoClient(mongo.url)
    try:
        raw = client[database]["api_tokens"].find_one({"_id": token_hash(token)})
        assert raw is not None
        assert (raw["tenant_id"], raw["role"]) == ("acme", Role.OPERATOR.value)
        assert token not in str(raw)
    finally:
        client.drop_database(database)
        client.close()
