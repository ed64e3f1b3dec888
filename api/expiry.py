"""Lifetimes of the secrets the api hands out (tokens, claim secrets): an expiry, when one
is given, lies in the future and at most :data:`MAX_LIFETIME_DAYS` ahead."""

from __future__ import annotations

from datetime import datetime

from api.errors import InvalidInput

__all__ = ["MAX_LIFETIME_DAYS", "check_expiry"]

MAX_LIFETIME_DAYS = 3660


def check_expiry(expires_at: datetime | None, now: datetime) -> None:
    """Refuse (422, naming ``body.expires_at``) an expiry in the past or too far ahead."""
    if expires_at is not None and not (
        now < expires_at and (expires_at - now).days <= MAX_LIFETIME_DAYS
    ):
        raise InvalidInput(
            f"expires_at: must be in the future, at most {MAX_LIFETIME_DAYS} days ahead",
            loc=("body", "expires_at"),
        )
