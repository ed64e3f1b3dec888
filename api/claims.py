"""Provisioning decisions, pure: claim validity, serial bindings, rate limits, secrets.

Transport (:mod:`api.provisioning`) and storage (:mod:`api.store.claims`) call these and
act on the answer; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from outpost.sealing import verify_signature
from schemas.documents import ClaimDoc, SerialBindingDoc
from schemas.provisioning import (
    CLAIM_SECRET_PREFIX,
    ProvisionRequest,
    RefusalReason,
    normalize_serial,
    signed_bytes,
)

__all__ = [
    "Binding",
    "RateLimiter",
    "binding_decision",
    "claim_refusal",
    "new_claim",
    "secret_hash",
    "valid_signature",
]


@dataclass(frozen=True, slots=True)
class NewClaim:
    claim_id: str
    secret: str  # shown once; the broker account's password

    @property
    def hash(self) -> str:
        return secret_hash(self.secret)


def new_claim() -> NewClaim:
    claim_id = secrets.token_hex(6)
    return NewClaim(claim_id, f"{CLAIM_SECRET_PREFIX}{claim_id}_{secrets.token_urlsafe(32)}")


def secret_hash(secret: str) -> str:
    """Stored instead of the secret (random and long: a fast hash is enough)."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def claim_refusal(claim: ClaimDoc | None, serial: str, now: datetime) -> RefusalReason | None:
    """Why ``claim`` gives ``serial`` no identity, or None: it may (limit aside)."""
    if claim is None:
        return RefusalReason.UNKNOWN_CLAIM
    if claim.revoked_at is not None:
        return RefusalReason.REVOKED
    if claim.expires_at is not None and claim.expires_at <= now:
        return RefusalReason.EXPIRED
    if claim.allow is not None and normalize_serial(serial) not in claim.allow:
        return RefusalReason.NOT_ALLOWED
    return None


def valid_signature(request: ProvisionRequest, claim_id: str) -> bool:
    return verify_signature(
        request.identity_key, signed_bytes(request, claim_id), request.signature
    )


class Binding(StrEnum):
    """What to do with a serial's binding for a request signed by ``identity_key``."""

    NEW = "new"  # no binding yet: bind this key to a new device
    SAME = "same"  # bound to this key: the same device, new credentials
    REBIND = "rebind"  # an admin reset it: bind this key to the same device
    MISMATCH = "mismatch"  # bound to another key: refuse


def binding_decision(binding: SerialBindingDoc | None, identity_key: str) -> Binding:
    if binding is None:
        return Binding.NEW
    if binding.identity_key is None:
        return Binding.REBIND
    if secrets.compare_digest(binding.identity_key, identity_key):
        return Binding.SAME
    return Binding.MISMATCH


class RateLimiter:
    """Token buckets by key: ``rate`` tokens a second, at most ``burst`` saved up.

    Kept in one api instance's memory (N instances allow N times the rate; the device
    limit and the serial bindings, which matter for safety, are in the database). At most
    ``max_keys`` buckets are kept; the least recently used goes first.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        """Take a token for ``key`` at monotonic time ``now``; False if none is left."""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed
