"""The cryptography of zero-touch provisioning (the ``cryptography`` package).

- A device's **identity key** is an Ed25519 key it keeps for life (text: base64 of the
  32-byte seed). It signs each provisioning request; the first request binds its public
  key to the device's serial, and a repeat must be signed by the same key.
- A **reply key** is a fresh X25519 key per request. The api seals the credentials to it
  (:func:`seal`): an ephemeral X25519 key of its own, HKDF-SHA256 over the shared secret
  (salt: both public keys, info :data:`INFO`), ChaCha20-Poly1305 with a random 12-byte
  nonce. Only the holder of the reply key opens it (:meth:`ReplyKey.open`); anyone else
  who reads the reply topic learns nothing, and a tampered box does not open.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.provisioning import Sealed

__all__ = ["INFO", "IdentityKey", "ReplyKey", "SealError", "seal", "verify_signature"]

INFO = b"outpost provisioning v1"


class SealError(ValueError):
    """A sealed box that does not open (another key, or tampered)."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _raw(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


class IdentityKey:
    """A device's Ed25519 identity key."""

    def __init__(self, seed_text: str | None = None) -> None:
        self._key = (
            Ed25519PrivateKey.from_private_bytes(_raw(seed_text))
            if seed_text
            else Ed25519PrivateKey.generate()
        )

    @property
    def seed_text(self) -> str:
        """The private key as text, for the device's storage."""
        return _b64(self._key.private_bytes_raw())

    @property
    def public_text(self) -> str:
        return _b64(self._key.public_key().public_bytes_raw())

    def sign(self, data: bytes) -> str:
        return _b64(self._key.sign(data))


def verify_signature(public_text: str, data: bytes, signature: str) -> bool:
    """Whether ``signature`` over ``data`` is the holder of ``public_text``'s."""
    try:
        key = Ed25519PublicKey.from_public_bytes(_raw(public_text))
        key.verify(_raw(signature), data)
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def _box_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> ChaCha20Poly1305:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=INFO)
    return ChaCha20Poly1305(hkdf.derive(shared))


class ReplyKey:
    """A one-request X25519 key: its public half goes in the request."""

    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()

    @property
    def public_text(self) -> str:
        return _b64(self._key.public_key().public_bytes_raw())

    def open(self, sealed: Sealed) -> bytes:
        try:
            ephemeral = _raw(sealed.ephemeral)
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(ephemeral))
            mine = self._key.public_key().public_bytes_raw()
            box = _box_key(shared, ephemeral, mine)
            return box.decrypt(_raw(sealed.nonce), _raw(sealed.box), None)
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise SealError("the sealed reply does not open with this key") from exc


def seal(recipient_text: str, plaintext: bytes) -> Sealed:
    """``plaintext`` readable only by the holder of X25519 key ``recipient_text``."""
    recipient = _raw(recipient_text)
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    ephemeral_raw = ephemeral.public_key().public_bytes_raw()
    nonce = os.urandom(12)
    box = _box_key(shared, ephemeral_raw, recipient).encrypt(nonce, plaintext, None)
    return Sealed(ephemeral=_b64(ephemeral_raw), nonce=_b64(nonce), box=_b64(box))
