"""Tokens and roles: pure functions, no I/O.

A token is ``opt_<id>_<secret>``; only ``sha256(token)`` is stored (it is random and
long, so a fast hash is enough; it is also the lookup key). The ``id`` part is public:
audit entries and revocation name it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

TOKEN_PREFIX = "opt_"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls: the token id, its tenant and role."""

    token_id: str
    tenant_id: str
    role: Role


@dataclass(frozen=True, slots=True)
class NewToken:
    token_id: str
    secret: str  # the full bearer token, shown once

    @property
    def hash(self) -> str:
        return token_hash(self.secret)


def new_token() -> NewToken:
    token_id = secrets.token_hex(6)
    return NewToken(token_id, f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value.startswith(TOKEN_PREFIX) or len(value) > 200:
        return None
    return value


def new_device_password() -> str:
    return secrets.token_urlsafe(24)


def password_hash(password: str) -> str:
    return "sha256:" + hashlib.sha256(password.encode()).hexdigest()
