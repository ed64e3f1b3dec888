"""The api's exception tree. Routes and stores raise these; ``problems`` renders them.

ApiError                      status, title, detail -> application/problem+json
├── Unauthorized      401     missing, unknown or revoked token
├── Forbidden         403     the token's role may not do this
├── NotFound          404     absent, or another tenant's (never a 403: no leak)
├── Conflict          409     duplicate, in use, already targeted
├── PreconditionFailed 412    If-Match does not name the current version
├── PreconditionRequired 428  If-Match missing where it is required
├── PayloadTooLarge   413     body over the configured limit
├── InvalidInput      422     semantically invalid input (e.g. config schema)
└── Unavailable       503     broker, database or S3 unreachable (BrokerError, StorageError)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FieldErrors = list[dict[str, Any]]  # [{loc, msg, type}], as a problem's ``errors``


class ApiError(Exception):
    status = 500
    title = "Internal Server Error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def errors(self) -> FieldErrors | None:
        return None


class Unauthorized(ApiError):
    status = 401
    title = "Unauthorized"


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"


class NotFound(ApiError):
    status = 404
    title = "Not Found"


class Conflict(ApiError):
    status = 409
    title = "Conflict"


class PreconditionFailed(ApiError):
    status = 412
    title = "Precondition Failed"


class PreconditionRequired(ApiError):
    status = 428
    title = "Precondition Required"


class PayloadTooLarge(ApiError):
    status = 413
    title = "Content Too Large"


class InvalidInput(ApiError):
    """422; ``errors`` names each field (``loc`` as in FastAPI's: ``body``, ``query``...)."""

    status = 422
    title = "Unprocessable Content"

    def __init__(
        self,
        detail: str,
        *,
        loc: Sequence[str | int] = ("body",),
        errors: FieldErrors | None = None,
    ) -> None:
        super().__init__(detail)
        self._errors = errors or [{"loc": list(loc), "msg": detail, "type": "value_error"}]

    @property
    def errors(self) -> FieldErrors:
        return self._errors


class Unavailable(ApiError):
    status = 503
    title = "Service Unavailable"


class BrokerError(Unavailable):
    """The MQTT broker did not take a publish or a dynamic-security command."""


class StorageError(Unavailable):
    """S3 refused or could not be reached."""
