"""RFC 9457 problem details: every error the api returns is ``application/problem+json``.

Handlers are installed by :func:`install`; bad input always gets a 4xx with a precise
``detail``; only a real bug reaches the catch-all, which logs it and answers 500.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pymongo.errors import AutoReconnect, ConnectionFailure, DuplicateKeyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import ApiError

MEDIA_TYPE = "application/problem+json"


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = Field(
        default=None, description="Each invalid field (always present on a 422)"
    )


class ValidationProblem(Problem):
    """A 422: the problem, with ``errors`` naming each invalid field."""

    errors: list[FieldError] = Field(min_length=1, description="Each invalid field")


def _content(schema_ref: str) -> dict[str, Any]:
    return {MEDIA_TYPE: {"schema": {"$ref": schema_ref}}}


def openapi_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting problem+json for the given statuses (a 422 as
    :class:`ValidationProblem`)."""
    return {
        status: {
            "description": "Validation problem" if status == 422 else "Problem",
            "content": _content(
                "#/components/schemas/" + ("ValidationProblem" if status == 422 else "Problem")
            ),
        }
        for status in statuses
    }


def problem_response(
    status: int,
    title: str,
    detail: str,
    request: Request,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Problem(
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=[FieldError.model_validate(e) for e in errors] if errors else None,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for error in exc.errors()[:20]:
        loc = [p if isinstance(p, int) else str(p) for p in error.get("loc", ())]
        out.append(
            {"loc": loc, "msg": str(error.get("msg", ""))[:300], "type": str(error.get("type", ""))}
        )
    return out


def _summary(errors: list[dict[str, Any]]) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5]]
    return "; ".join(parts) or "invalid request"


def _missing_precondition(errors: list[dict[str, Any]]) -> bool:
    """A required If-Match is missing: RFC 6585 says 428 (whatever else is wrong)."""
    return any(
        e["type"] == "missing" and [str(p).lower() for p in e["loc"]] == ["header", "if-match"]
        for e in errors
    )


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the OpenAPI document lists for ``path``: the whole ``Allow`` of a 405
    (Starlette names only the first matching route's methods)."""
    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        for method, operation in operations.items():
            if method.upper() in _METHODS and re.fullmatch(_path_regex(template, operation), path):
                methods.add(method.upper())
    return sorted(methods)


_METHODS = {"GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"}


def _path_regex(template: str, operation: dict[str, Any]) -> str:
    """``/rollouts/{rollout_id}`` as a regex, each parameter by its own pattern (so
    ``/rollouts/dry-run`` is not a rollout id)."""
    patterns = {
        p["name"]: p.get("schema", {}).get("pattern", "^[^/]+$")
        for p in operation.get("parameters", [])
        if p.get("in") == "path"
    }
    regex = ""
    for part in re.split(r"(\{[^/{}]+\})", template):
        if part.startswith("{") and part.endswith("}"):
            regex += "(?:" + patterns.get(part[1:-1], "^[^/]+$").lstrip("^").rstrip("$") + ")"
        else:
            regex += re.escape(part)
    return regex


def install(app: FastAPI, logger: logging.Logger) -> None:
    """Register the handlers that turn every error into problem+json."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status >= 400:
            metrics = getattr(request.app.state, "metrics", None)
            if metrics is not None:
                metrics.rejections.labels(str(exc.status)).inc()
        return problem_response(
            exc.status, exc.title, exc.detail, request, exc.errors, headers=headers
        )

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _field_errors(exc)
        if any(e["loc"][:1] == ["path"] for e in errors):
            # /rollouts/dry-run is no rollout id: a method the path does not serve is 405
            allowed = allowed_methods(app, request.url.path)
            if allowed and request.method not in allowed:
                headers = {"Allow": ", ".join(allowed)}
                return problem_response(
                    405, "Method Not Allowed", "Method Not Allowed", request, headers=headers
                )
        if _missing_precondition(errors):
            detail = 'send If-Match with the current version (a strong ETag, e.g. "3")'
            return problem_response(428, "Precondition Required", detail, request)
        return problem_response(422, "Unprocessable Content", _summary(errors), request, errors)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        return problem_response(
            exc.status_code, _title(exc.status_code), str(exc.detail), request, headers=headers
        )

    async def duplicate(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(409, "Conflict", "object already exists", request)

    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        logger.warning(
            "database unavailable", extra={"path": request.url.path, "error": str(exc)[:300]}
        )
        return problem_response(503, "Service Unavailable", "database unavailable", request)

    async def bug(request: Request, exc: Exception) -> JSONResponse:
        logger.error(
            "unhandled error",
            exc_info=exc,
            extra={"path": request.url.path, "method": request.method},
        )
        return problem_response(
            500, "Internal Server Error", "unexpected error; it was logged", request
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DuplicateKeyError, duplicate)
    app.add_exception_handler(ConnectionFailure, database_down)
    app.add_exception_handler(AutoReconnect, database_down)
    app.add_exception_handler(Exception, bug)


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    503: "Service Unavailable",
}


def _title(status: int) -> str:
    return _TITLES.get(status, "Error")
