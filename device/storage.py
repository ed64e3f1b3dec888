"""The agent's small persistent state: one JSON file, replaced atomically.

It holds what must survive a reboot: the session counter (the first half of every
ordering key, so it must never go back), the running firmware, the last config report,
the upgrade job on record, the last command ids it handled (so a request delivered again
after a reboot it caused does not run twice) and, for a device provisioned from a claim,
its identity key and the account it got (so the file is private: mode 0600). Written
with write-to-temp + fsync + rename, so a power cut leaves either the old or the new
file, never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device.behaviour import JobRecord
from device.errors import StateFileError
from schemas.protocol import ConfigReport
from schemas.provisioning import Identity

__all__ = ["AgentState", "load_state", "save_state"]


class AgentState(BaseModel):
    model_config = ConfigDict(frozen=True)

    session: int = 0
    firmware: str
    config: ConfigReport | None = None
    job: JobRecord | None = None
    identity_key: str | None = None  # Ed25519 seed (base64), made before the first request
    identity: Identity | None = None  # what provisioning from a claim returned
    commands: list[str] = Field(
        default_factory=list, description="The last command ids handled (a reboot included)"
    )


def load_state(path: Path, *, firmware: str) -> AgentState:
    """The stored state, or a fresh one running ``firmware`` when there is no file yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return AgentState(firmware=firmware)
    except OSError as exc:
        raise StateFileError(f"cannot read {path}: {exc}") from exc
    try:
        return AgentState.model_validate_json(text)
    except ValidationError as exc:
        raise StateFileError(f"corrupt state file {path}: {exc.errors()[0]['msg']}") from exc


def save_state(path: Path, state: AgentState) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(state.model_dump_json(indent=1))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except OSError as exc:
        raise StateFileError(f"cannot write {path}: {exc}") from exc
