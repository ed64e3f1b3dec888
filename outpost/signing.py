"""Ed25519 signatures of firmware manifests (the ``cryptography`` package).

Keys travel as text: a private key is the base64 of its 32-byte seed (the api's
``OUTPOST_FIRMWARE_SIGNING_KEY``), a public key the base64 of its 32 raw bytes (what a
device gets at registration), a signature the base64 of its 64 bytes.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.firmware import FirmwareManifest

__all__ = ["SigningKey", "new_private_key", "verify"]


class SigningKey:
    def __init__(self, private_text: str) -> None:
        try:
            seed = base64.b64decode(private_text, validate=True)
            self._key = Ed25519PrivateKey.from_private_bytes(seed)
        except (binascii.Error, ValueError):
            raise ValueError("a firmware signing key is the base64 of a 32-byte seed") from None

    @property
    def public_text(self) -> str:
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def sign(self, manifest: FirmwareManifest) -> str:
        return base64.b64encode(self._key.sign(manifest.canonical())).decode()


def new_private_key() -> str:
    """A fresh private key as text (``outpost dev up`` makes one per stack)."""
    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    return base64.b64encode(seed).decode()


def verify(public_text: str, manifest: FirmwareManifest, signature: str) -> bool:
    """Whether ``signature`` is the holder of ``public_text``'s over ``manifest``."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_text, validate=True))
        key.verify(base64.b64decode(signature, validate=True), manifest.canonical())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True
