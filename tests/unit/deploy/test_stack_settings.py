"""The local stack's own settings: what ``outpost dev up`` writes for the services is
not read back by the stack as the user's choice."""

from __future__ import annotations

import os

import pytest

from deploy.local.servers import ExternalMongo, MongoServer
from deploy.local.stack import DevSettings, Stack


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env or .outpost/dev.env from the developer's tree
    for key in list(os.environ):
        if key.startswith("OUTPOST_"):
            monkeypatch.delenv(key)


def test_the_stack_keeps_its_own_database_after_writing_dev_env(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dev.env`` names the stack's FerretDB in ``OUTPOST_MONGO_URL`` for the services.
    Read back by the stack, that made its database "someone else's": ``outpost dev
    status`` showed it stopped while it ran, and ``outpost dev down`` left FerretDB and
    PostgreSQL running. A MongoDB of one's own is still named in the environment or
    ``.env``."""
    stack = Stack(DevSettings())
    stack.write_env(stack.env_file)
    assert "OUTPOST_MONGO_URL=mongodb://127.0.0.1:27117/" in stack.env_file.read_text()
    assert isinstance(Stack(DevSettings()).mongo, MongoServer)

    (tmp_path / ".env").write_text("OUTPOST_MONGO_URL=mongodb://db.example:27017/\n")
    assert isinstance(Stack(DevSettings()).mongo, ExternalMongo)
    (tmp_path / ".env").unlink()
    monkeypatch.setenv("OUTPOST_MONGO_URL", "mongodb://db.example:27017/")
    mongo = Stack(DevSettings()).mongo
    assert isinstance(mongo, ExternalMongo)
    assert mongo.url == "mongodb://db.example:27017/"
