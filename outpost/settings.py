"""Every setting Outpost reads, in one place.

Each group reads its own ``OUTPOST_<GROUP>_*`` environment variables; services build
only the groups they need, in ``main()``, never at import time. Values come from, in
order of precedence: the environment, ``./.env``, then ``./.outpost/dev.env`` (written by
``outpost dev up`` so that every command finds the local stack without exports).

Invalid settings raise :class:`SettingsError` whose message is one line naming the
variable, e.g. ``OUTPOST_MQTT_URL: scheme must be mqtt or mqtts, got 'http'``.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_ENV_FILE = ".outpost/dev.env"
_ENV_FILES = (DEV_ENV_FILE, ".env")  # later files win

__all__ = [
    "DEV_ENV_FILE",
    "HttpSettings",
    "MongoSettings",
    "MqttSettings",
    "S3Settings",
    "SettingsError",
    "load",
]


class SettingsError(Exception):
    """A setting is missing or invalid; ``str()`` is one line naming the variable."""


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix, env_file=_ENV_FILES, env_file_encoding="utf-8", extra="ignore"
    )


def _mqtt_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"scheme must be mqtt or mqtts, got {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("missing host, expected mqtt://host:port")
    _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    _ = parts.port
    return value


def _mongo_url(value: str) -> str:
    if not value.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError("expected a mongodb:// or mongodb+srv:// URL")
    return value


MqttUrl = Annotated[str, AfterValidator(_mqtt_url)]
HttpUrlStr = Annotated[str, AfterValidator(_http_url)]
MongoUrl = Annotated[str, AfterValidator(_mongo_url)]


class MqttSettings(BaseSettings):
    """Broker connection: ``OUTPOST_MQTT_URL`` (``mqtt://`` or ``mqtts://``) and credentials.

    Credentials may sit in the URL (``mqtt://user:pass@host:port``) or in
    ``OUTPOST_MQTT_USERNAME`` / ``OUTPOST_MQTT_PASSWORD``; the separate variables win.
    """

    model_config = _config("OUTPOST_MQTT_")

    url: MqttUrl
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = Field(default=None, description="CA bundle for mqtts (else system CAs)")
    client_id_prefix: str = "outpost"
    keepalive: int = Field(default=30, ge=5, le=3600)

    @model_validator(mode="after")
    def _credentials_from_url(self) -> MqttSettings:
        parts = urlsplit(self.url)
        if self.username is None and parts.username:
            self.username = unquote(parts.username)
        if self.password is None and parts.password:
            self.password = SecretStr(unquote(parts.password))
        return self

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None  # checked by the validator
        return host

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if self.tls else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def password_value(self) -> str | None:
        return self.password.get_secret_value() if self.password else None


class MongoSettings(BaseSettings):
    """``OUTPOST_MONGO_URL`` and ``OUTPOST_MONGO_DATABASE``."""

    model_config = _config("OUTPOST_MONGO_")

    url: MongoUrl
    database: str = Field(default="outpost", pattern=r"^[A-Za-z0-9_-]{1,63}$")


class S3Settings(BaseSettings):
    """``OUTPOST_S3_*``: endpoint (unset for AWS), region, bucket and credentials."""

    model_config = _config("OUTPOST_S3_")

    endpoint_url: HttpUrlStr | None = None
    region: str = "us-east-1"
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    access_key_id: str = Field(min_length=3)
    secret_access_key: SecretStr
    presign_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)


class HttpSettings(BaseSettings):
    """Where a service serves its health and metrics (and, for the api, its routes)."""

    model_config = _config("OUTPOST_HTTP_")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S], **overrides: Any) -> S:
    """Build a settings group, turning validation errors into one clear line."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(cls, exc)) from None


def _describe(cls: type[BaseSettings], exc: ValidationError) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    problems = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "value"
        variable = f"{prefix}{field}".upper()
        message = "is required but not set" if error["type"] == "missing" else error["msg"]
        problems.append(f"{variable}: {message.removeprefix('Value error, ')}")
    return "; ".join(problems)
