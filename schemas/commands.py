"""Device commands: the built-in commands' arguments and outputs, and pure decisions.

A command travels as an MQTT v5 request (:class:`~schemas.protocol.CommandRequest` on
``devices/{id}/commands/{command_id}``) and comes back once as a
:class:`~schemas.protocol.CommandResultMessage` on ``.../result``. The wire models are
generic (a name, scalar ``args``, a JSON ``output``) so a device may know commands the
backend does not, and the other way round: a device answers a name it does not know with
status ``unknown``. The built-in ones, which every Outpost device implements (the shell
device: ``reboot`` and ``ping`` only):

=========  ==============================  ==============================================
name       args                            output
=========  ==============================  ==============================================
reboot     (none)                          ``{"rebooting": true}``, sent before it drops
                                           its session (offline, reason ``reboot``) and
                                           comes back
ping       ``target`` (host), ``count``    ``target``, ``sent``, ``received``,
           (1-10, default 3)               ``rtt_ms`` (one per answer)
scan       ``band`` (optional)             ``bands``: band -> list of networks (ssid,
                                           bssid, channel, rssi_dbm)
counters   ``interface`` (optional)        ``interfaces``: name -> counters
logs       ``upload_url`` (presigned PUT,  ``key``, ``size``, ``sha256`` of what it
           added at send time), ``key``,   uploaded
           ``max_bytes``
=========  ==============================  ==============================================

Deadlines: every command has an ``expires_at``. The broker drops an undelivered request
then (Message Expiry Interval, :func:`expiry_interval`), a device never starts one past
it, the bridge refuses a result received after it, and readers show a command without a
result as ``expired`` from then on (:func:`command_status`): an expired command never
runs late.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from schemas.protocol import CommandRequest, CommandStatus, Sha256Hex, is_loopback

__all__ = [
    "BUILTIN",
    "DEFAULT_EXPIRY_S",
    "LOG_MAX_BYTES",
    "MAX_EXPIRY_S",
    "MIN_EXPIRY_S",
    "CommandName",
    "CountersArgs",
    "CountersOutput",
    "LogsArgs",
    "LogsOutput",
    "Network",
    "NoArgs",
    "PingArgs",
    "PingOutput",
    "ReadStatus",
    "RebootOutput",
    "ScanArgs",
    "ScanOutput",
    "check_args",
    "command_status",
    "expiry_interval",
    "label",
    "logs_key",
    "may_run",
    "request",
]

DEFAULT_EXPIRY_S = 300
MIN_EXPIRY_S = 2
MAX_EXPIRY_S = 7 * 24 * 3600
LOG_MAX_BYTES = 16 * 1024 * 1024


class CommandName(StrEnum):
    REBOOT = "reboot"
    PING = "ping"
    SCAN = "scan"
    COUNTERS = "counters"
    LOGS = "logs"


class _Args(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoArgs(_Args):
    """``reboot``: no arguments."""


Host = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")]
Band = Literal["2.4GHz", "5GHz", "6GHz"]


class PingArgs(_Args):
    target: Host
    count: int = Field(default=3, ge=1, le=10)


class ScanArgs(_Args):
    band: Band | None = None


class CountersArgs(_Args):
    interface: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,32}$")] | None = None


LogsKey = Annotated[str, StringConstraints(pattern=r"^logs/[A-Za-z0-9/_.:-]{1,400}$")]


class LogsArgs(_Args):
    """``upload_url`` is added by whoever sends the command (a presigned S3 PUT valid
    until the command expires); it is never stored."""

    upload_url: str | None = Field(default=None, max_length=4096, pattern=r"^https?://")
    key: LogsKey | None = None
    max_bytes: int = Field(default=LOG_MAX_BYTES, ge=1, le=LOG_MAX_BYTES)

    def checked_url(self) -> str:
        """The upload URL, https unless it points at this machine (as firmware URLs)."""
        if self.upload_url is None or self.key is None:
            raise ValueError("logs needs upload_url and key")
        parts = urlsplit(self.upload_url)
        if parts.scheme != "https" and not is_loopback(parts.hostname):
            raise ValueError("upload URLs must be https (http only for loopback hosts)")
        return self.upload_url


ARGS: dict[CommandName, type[_Args]] = {
    CommandName.REBOOT: NoArgs,
    CommandName.PING: PingArgs,
    CommandName.SCAN: ScanArgs,
    CommandName.COUNTERS: CountersArgs,
    CommandName.LOGS: LogsArgs,
}
BUILTIN = frozenset(c.value for c in CommandName)


class _Output(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class RebootOutput(_Output):
    rebooting: bool = True


class PingOutput(_Output):
    target: str
    sent: int = Field(ge=0)
    received: int = Field(ge=0)
    rtt_ms: list[float] = Field(default_factory=list, max_length=10)


class Network(_Output):
    ssid: str = Field(max_length=32)
    bssid: str = Field(pattern=r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
    channel: int = Field(ge=1, le=233)
    rssi_dbm: int = Field(ge=-127, le=0)


class ScanOutput(_Output):
    bands: dict[str, list[Network]] = Field(default_factory=dict)


class CountersOutput(_Output):
    interfaces: dict[str, dict[str, int]] = Field(default_factory=dict)


class LogsOutput(_Output):
    key: str
    size: int = Field(ge=0)
    sha256: Sha256Hex


def label(name: str) -> str:
    """A bounded metric label: the built-in name, or ``other``."""
    return name if name in BUILTIN else "other"


def check_args(name: str, args: dict[str, Any]) -> _Args | None:
    """The typed arguments of a built-in command (None for any other name);
    :class:`ValueError` with the reason when they are invalid."""
    if name not in BUILTIN:
        return None
    try:
        return ARGS[CommandName(name)].model_validate(args)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(where[:500]) from None


def logs_key(tenant_id: str, device_id: str, command_id: str) -> str:
    """Where a device's log upload goes: chosen by the backend, never by the device."""
    return f"logs/{tenant_id}/{device_id}/{command_id}.log"


def request(
    command_id: str,
    name: str,
    args: dict[str, Any],
    issued_at: datetime,
    expires_at: datetime,
    upload_url: str | None = None,
) -> CommandRequest:
    """The request to publish; a ``logs`` command gets its presigned ``upload_url``."""
    full = {**args, "upload_url": upload_url} if upload_url is not None else args
    return CommandRequest(
        command_id=command_id, name=name, args=full, issued_at=issued_at, expires_at=expires_at
    )


def expiry_interval(expires_at: datetime, now: datetime) -> int | None:
    """The MQTT Message Expiry Interval for a publish at ``now``: whole seconds, rounded
    down (the broker drops the message no later than ``expires_at``); None when less than
    one second is left (then nothing is sent)."""
    left = (expires_at - now).total_seconds()
    return math.floor(left) if left >= 1 else None


def may_run(command: CommandRequest, now: datetime) -> bool:
    """A device starts a command only before its deadline (by its own clock)."""
    return now < command.expires_at


ReadStatus = Literal[
    "queued", "sent", "succeeded", "failed", "rejected", "unknown", "expired", "undeliverable"
]


def command_status(
    *,
    expires_at: datetime,
    now: datetime,
    result: CommandStatus | None,
    sent: bool,
    send_failed: bool = False,
) -> ReadStatus:
    """What a reader shows: the device's answer if one was stored; else ``expired`` once
    the deadline passed (computed when read: nothing rewrites the command); else
    ``sent`` (the broker took it) or ``queued`` (a group command waiting for its turn).
    ``undeliverable``: the broker refused it (only before the deadline)."""
    if result is not None:
        return result.value
    if now >= expires_at:
        return "expired"
    if send_failed:
        return "undeliverable"
    return "sent" if sent else "queued"
