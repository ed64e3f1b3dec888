"""What a firmware signature covers, and how firmware versions are ordered.

The api signs a :class:`FirmwareManifest` when an image is uploaded (it has just
measured the size and sha256); the scheduler copies manifest and signature into every
upgrade command; a device verifies the signature with the public key it got at
registration before it downloads anything, then checks the image against the signed
size and sha256. Whoever can publish on a device's job topic therefore still cannot make
it install an image the api did not sign.
"""

from __future__ import annotations

import json
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["FirmwareManifest", "is_downgrade", "semver_key"]

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)


class FirmwareManifest(BaseModel):
    """The signed facts about one image."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    size: Annotated[int, Field(gt=0, le=2**63 - 1)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    hardware_models: tuple[Annotated[str, StringConstraints(min_length=1, max_length=64)], ...] = (
        Field(min_length=1, max_length=64)
    )

    def canonical(self) -> bytes:
        """The signed bytes: sorted keys, sorted models, no spaces, UTF-8."""
        body = self.model_dump(mode="json")
        body["hardware_models"] = sorted(set(self.hardware_models))
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def semver_key(version: str) -> tuple[int, int, int, tuple[tuple[int, int | str], ...]] | None:
    """Sort key of a SemVer 2.0 version (build metadata ignored), None if it is not one.

    A pre-release sorts before its release; its identifiers compare numerically when
    numeric, else as text, numeric ones first (SemVer 2.0, rule 11).
    """
    match = _SEMVER.match(version)
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    if pre is None:
        return int(major), int(minor), int(patch), ((2, 0),)  # a release: after any pre-release
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))
    return int(major), int(minor), int(patch), parts


def is_downgrade(target: str, running: str) -> bool:
    """Whether installing ``target`` over ``running`` goes back. Versions that cannot be
    ordered count as a downgrade: a device only moves forward when it can tell."""
    new, old = semver_key(target), semver_key(running)
    if new is None or old is None:
        return target != running
    return new < old
