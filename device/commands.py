"""What a device decides about a command, without I/O: shared by the agent and the simulator.

- :func:`decide`: run, ignore (a command id already handled: a redelivery), skip (past
  its deadline: never run late), or answer at once (unknown name, invalid arguments);
- :class:`Handled`: the recent command ids a device remembers (bounded), so a request
  the broker or a re-sending scheduler delivers twice runs once;
- :func:`result`: the one answer;
- the simulator's outputs (:func:`simulated_ping`, :func:`simulated_scan`,
  :func:`simulated_counters`, :func:`simulated_log`): deterministic per device and seed.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from schemas import commands as c
from schemas.protocol import (
    CommandRequest,
    CommandResultMessage,
    CommandStatus,
    OrderKey,
    Rejected,
    parse_backend_message,
)

__all__ = [
    "Action",
    "Decision",
    "Handled",
    "decide",
    "parse",
    "result",
    "simulated_counters",
    "simulated_log",
    "simulated_ping",
    "simulated_scan",
]


class Action(StrEnum):
    RUN = "run"
    ANSWER = "answer"  # answer at once with ``status`` and ``error``, run nothing
    IGNORE = "ignore"  # handled before (a redelivery): no second answer
    EXPIRED = "expired"  # past its deadline: not run, not answered


@dataclass(frozen=True)
class Decision:
    action: Action
    args: BaseModel | None = None
    status: CommandStatus | None = None
    error: str | None = None


@dataclass
class Handled:
    """The last ``capacity`` command ids this device handled (oldest forgotten first)."""

    capacity: int = 256
    ids: deque[str] = field(default_factory=deque)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self.ids

    def add(self, command_id: str) -> None:
        self.ids.append(command_id)
        while len(self.ids) > self.capacity:
            self.ids.popleft()

    @classmethod
    def of(cls, ids: Iterable[str], capacity: int = 256) -> Handled:
        handled = cls(capacity)
        for command_id in ids:
            handled.add(command_id)
        return handled


def parse(topic: str, payload: bytes) -> CommandRequest | str:
    """The request on ``topic``, or why it is invalid."""
    try:
        _, message = parse_backend_message(topic, payload)
    except Rejected as exc:
        return exc.detail
    assert isinstance(message, CommandRequest)
    return message


def decide(
    request: CommandRequest, now: datetime, handled: Handled, known: frozenset[str] = c.BUILTIN
) -> Decision:
    """What to do with ``request`` (``known``: the command names this device runs)."""
    if request.command_id in handled:
        return Decision(Action.IGNORE)
    if not c.may_run(request, now):
        return Decision(Action.EXPIRED)
    if request.name not in known:
        return Decision(
            Action.ANSWER, status=CommandStatus.UNKNOWN, error=f"unknown command {request.name!r}"
        )
    try:
        args = c.check_args(request.name, dict(request.args))
        if isinstance(args, c.LogsArgs):
            args.checked_url()
    except ValueError as exc:
        return Decision(Action.ANSWER, status=CommandStatus.REJECTED, error=str(exc)[:1000])
    return Decision(Action.RUN, args=args)


def result(
    device_id: str,
    key: OrderKey,
    now: datetime,
    command_id: str,
    status: CommandStatus,
    output: BaseModel | dict[str, Any] | None = None,
    error: str | None = None,
) -> CommandResultMessage:
    body = output.model_dump(mode="json") if isinstance(output, BaseModel) else (output or {})
    return CommandResultMessage(
        device_id=device_id,
        key=key,
        ts=now,
        command_id=command_id,
        status=status,
        output=body,
        error=error[:1000] if error else None,
    )


# -- simulated outputs -------------------------------------------------------------------


def simulated_ping(args: c.PingArgs, rng: random.Random) -> c.PingOutput:
    rtts = [round(rng.uniform(0.3, 25.0), 2) for _ in range(args.count)]
    return c.PingOutput(target=args.target, sent=args.count, received=len(rtts), rtt_ms=rtts)


_CHANNELS = {"2.4GHz": (1, 6, 11), "5GHz": (36, 44, 100, 149), "6GHz": (5, 37, 69)}


def simulated_scan(args: c.ScanArgs, rng: random.Random) -> c.ScanOutput:
    bands = [args.band] if args.band else list(_CHANNELS)
    found: dict[str, list[c.Network]] = {}
    for band in bands:
        found[band] = [
            c.Network(
                ssid=f"neighbour-{rng.randrange(1000):03d}",
                bssid=":".join(f"{rng.randrange(256):02x}" for _ in range(6)),
                channel=rng.choice(_CHANNELS[band]),
                rssi_dbm=-rng.randrange(30, 95),
            )
            for _ in range(rng.randrange(1, 6))
        ]
    return c.ScanOutput(bands=found)


def simulated_counters(args: c.CountersArgs, rng: random.Random) -> c.CountersOutput:
    names = [args.interface] if args.interface else ["eth0", "wlan0", "wlan1"]
    return c.CountersOutput(
        interfaces={
            name: {
                "rx_bytes": rng.randrange(2**40),
                "tx_bytes": rng.randrange(2**40),
                "rx_errors": rng.randrange(100),
                "tx_errors": rng.randrange(100),
            }
            for name in names
        }
    )


def simulated_log(device_id: str, size: int) -> bytes:
    """``size`` bytes of log lines, the same for the same device (a test can check them)."""
    lines: list[bytes] = []
    total, n = 0, 0
    while total < size:
        digest = hashlib.sha256(f"{device_id}:{n}".encode()).hexdigest()
        line = f"{n:08d} {device_id} daemon.info hostapd: event {digest}\n".encode()
        lines.append(line)
        total += len(line)
        n += 1
    return b"".join(lines)[:size]
