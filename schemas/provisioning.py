"""Zero-touch provisioning payloads: a device's request for an identity and the reply.

Channel (``schemas.topics``): a device holding a claim's secret connects as the claim's
broker account and publishes a :class:`ProvisionRequest` on
``provision/{claim_id}/request`` with the MQTT v5 *Response Topic*
``provision/{claim_id}/reply/{token}`` (``token``: at least 128 random bits) and
*Correlation Data*; the api answers there with a :class:`ProvisionReply`. Neither is ever
retained.

The request is signed with the device's own Ed25519 **identity key** (kept on the device
for life; the first request binds it to the serial) over :func:`signed_bytes`, and names a
fresh X25519 **reply key**. A reply that hands out credentials carries them only sealed
to that reply key (:class:`Sealed`, opened with ``outpost.sealing``): whoever else reads
the reply topic learns nothing. See docs/protocol.md for the threat model.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.topics import DEVICE_ID_PATTERN

__all__ = [
    "MAX_REPLY_BYTES",
    "MAX_REQUEST_BYTES",
    "SERIAL_PATTERN",
    "Identity",
    "ProvisionReply",
    "ProvisionRequest",
    "RefusalReason",
    "Sealed",
    "claim_id_of",
    "claim_username",
    "normalize_serial",
    "signed_bytes",
]

MAX_REQUEST_BYTES = 4096
MAX_REPLY_BYTES = 8192
SERIAL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")
KEY_B64 = r"^[A-Za-z0-9+/]{43}=$"  # 32 raw bytes
SIGNATURE_B64 = r"^[A-Za-z0-9+/]{86}==$"  # 64 raw bytes
NONCE = r"^[A-Za-z0-9_-]{22,64}$"

Serial = Annotated[str, StringConstraints(pattern=SERIAL_PATTERN)]
Key = Annotated[str, StringConstraints(pattern=KEY_B64)]
Nonce = Annotated[str, StringConstraints(pattern=NONCE)]
Model = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
B64 = Annotated[str, StringConstraints(max_length=4096, pattern=r"^[A-Za-z0-9+/]*={0,2}$")]


CLAIM_SECRET_PREFIX = "opc_"
_CLAIM_SECRET = re.compile(r"^opc_([0-9a-f]{12})_[A-Za-z0-9_-]{32,86}$")


def claim_id_of(secret: str) -> str:
    """The claim id inside a claim secret ``opc_<claim id>_<random>``; ValueError if it
    is not one. The whole secret is the password of the claim's broker account."""
    found = _CLAIM_SECRET.fullmatch(secret.strip())
    if found is None:
        raise ValueError("a claim secret looks like opc_<12 hex digits>_<random>")
    return found.group(1)


def claim_username(claim_id: str) -> str:
    """The claim's broker account: ``claim/<id>`` (a ``/`` no device id contains)."""
    return f"claim/{claim_id}"


def normalize_serial(value: str) -> str:
    """How serials are compared: a MAC address in any usual spelling (``AA-BB-..``,
    ``aabb..``) becomes ``aa:bb:cc:dd:ee:ff``; any other serial is taken as written."""
    if _MAC.fullmatch(value):
        digits = re.sub(r"[:-]", "", value).lower()
        return ":".join(digits[i : i + 2] for i in range(0, 12, 2))
    return value


class RefusalReason(StrEnum):
    """Why a request got no identity (a metric label; closed set)."""

    INVALID = "invalid"  # unreadable, too large, bad signature, bad reply topic
    UNKNOWN_CLAIM = "unknown_claim"
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_ALLOWED = "not_allowed"  # serial not on the claim's allow-list
    OVER_LIMIT = "over_limit"  # the claim's device limit is reached
    RATE_LIMITED = "rate_limited"  # too many requests for this claim or this serial
    IDENTITY_MISMATCH = "identity_mismatch"  # serial bound to another device's key
    REPLAYED = "replayed"  # this request (nonce) was answered before
    DECOMMISSIONED = "decommissioned"  # the serial's device was decommissioned
    UNAVAILABLE = "unavailable"  # database or broker trouble: retry later


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    v: int = Field(default=1, ge=1, description="Schema version of the payload")


class ProvisionRequest(_Payload):
    """``provision/{claim_id}/request``: a device asks for its identity."""

    serial: Serial = Field(description="Serial number or MAC address")
    hardware_model: Model
    identity_key: Key = Field(description="The device's Ed25519 public key (base64)")
    reply_key: Key = Field(description="A fresh X25519 public key; the reply is sealed to it")
    nonce: Nonce = Field(description="Random, new for every request (a repeat is refused)")
    signature: Annotated[str, StringConstraints(pattern=SIGNATURE_B64)] = Field(
        description="Ed25519 over signed_bytes(claim_id) with the identity key"
    )


def signed_bytes(request: ProvisionRequest, claim_id: str) -> bytes:
    """What the identity key signs: every field but the signature, and the claim id, as
    compact JSON with sorted keys (UTF-8)."""
    fields = request.model_dump(exclude={"signature"}) | {"claim_id": claim_id}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


class Sealed(_Payload):
    """A secret for the holder of one X25519 key (``outpost.sealing``): ``ephemeral`` is
    the api's one-time public key, ``nonce`` the 16-byte AES-CTR initial counter block,
    ``box`` the AES-256-CTR ciphertext followed by its 32-byte HMAC-SHA256 (base64)."""

    ephemeral: Key
    nonce: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{22}==$")]
    box: B64


class ProvisionReply(_Payload):
    """``provision/{claim_id}/reply/{token}``: an identity (sealed) or a refusal."""

    status: Literal["ok", "refused"]
    reason: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None,
        description="Why refused: one of RefusalReason (a newer backend may add reasons; "
        "a device treats any it does not know as final)",
    )
    detail: Annotated[str, StringConstraints(max_length=300)] | None = None
    sealed: Sealed | None = Field(default=None, description="The Identity, when ok")


class Identity(_Payload):
    """What a sealed reply holds: the device's own account and what it needs to use it."""

    device_id: Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
    username: str
    client_id: str
    password: Annotated[str, StringConstraints(min_length=16, max_length=200)]
    broker_url: str | None = Field(
        default=None, description="Where to connect with it; null: where the request went"
    )
    firmware_public_key: str | None = None
    tenant_id: str
