"""The cryptography of zero-touch provisioning (the ``cryptography`` package).

- A device's **identity key** is an Ed25519 key it keeps for life (text: base64 of the
  32-byte seed). It signs each provisioning request; the first request binds its public
  key to the device's serial, and a repeat must be signed by the same key.
- A **reply key** is a fresh X25519 key per request. The api seals the credentials to it
  (:func:`seal`): an ephemeral X25519 key of its own; HKDF-SHA256 over the shared secret
  (salt: the ephemeral then the reply public key, info :data:`INFO`) gives 64 bytes, an
  AES-256 key and an HMAC-SHA256 key; the box is AES-256-CTR under a random 16-byte
  initial counter block, followed by the HMAC of that block and the ciphertext
  (encrypt-then-MAC). Only the holder of the reply key opens it (:meth:`ReplyKey.open`);
  anyone else who reads the reply topic learns nothing, and a tampered box does not open.
  Why not an AEAD such as ChaCha20-Poly1305: a device in shell script opens this box with
  the ``openssl`` command line (``pkeyutl -derive``, ``kdf HKDF``, ``dgst -mac HMAC``,
  ``enc -aes-256-ctr``), whose ``enc`` has no AEAD mode.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC
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


TAG_BYTES = 32


def _keys(shared: bytes, ephemeral: bytes, recipient: bytes) -> tuple[bytes, bytes]:
    """(AES-256 key, HMAC-SHA256 key) from the X25519 shared secret."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=64, salt=ephemeral + recipient, info=INFO)
    both = hkdf.derive(shared)
    return both[:32], both[32:]


def _mac(key: bytes, iv: bytes, ciphertext: bytes) -> HMAC:
    mac = HMAC(key, hashes.SHA256())
    mac.update(iv + ciphertext)
    return mac


def _ctr(key: bytes, iv: bytes) -> Cipher[modes.CTR]:
    return Cipher(algorithms.AES(key), modes.CTR(iv))


class ReplyKey:
    """A one-request X25519 key: its public half goes in the request."""

    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()

    @property
    def public_text(self) -> str:
        return _b64(self._key.public_key().public_bytes_raw())

    def open(self, sealed: Sealed) -> bytes:
        try:
            ephemeral, iv, box = _raw(sealed.ephemeral), _raw(sealed.nonce), _raw(sealed.box)
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(ephemeral))
            mine = self._key.public_key().public_bytes_raw()
            enc, mac = _keys(shared, ephemeral, mine)
            ciphertext, tag = box[:-TAG_BYTES], box[-TAG_BYTES:]
            _mac(mac, iv, ciphertext).verify(tag)
            decryptor = _ctr(enc, iv).decryptor()
            return decryptor.update(ciphertext) + decryptor.finalize()
        except (binascii.Error, ValueError, InvalidSignature) as exc:
            raise SealError("the sealed reply does not open with this key") from exc


def seal(recipient_text: str, plaintext: bytes) -> Sealed:
    """``plaintext`` readable only by the holder of X25519 key ``recipient_text``."""
    recipient = _raw(recipient_text)
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    ephemeral_raw = ephemeral.public_key().public_bytes_raw()
    enc, mac = _keys(shared, ephemeral_raw, recipient)
    iv = os.urandom(16)
    encryptor = _ctr(enc, iv).encryptor()
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    tag = _mac(mac, iv, ciphertext).finalize()
    return Sealed(ephemeral=_b64(ephemeral_raw), nonce=_b64(iv), box=_b64(ciphertext + tag))
