"""Builders for unit tests: inbound messages as the transport would hand them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from bridge.inbound import Inbound

_mid = 0


def inbound(topic: str, payload: bytes | dict[str, Any], *, retain: bool = False) -> Inbound:
    global _mid
    _mid += 1
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Inbound(topic, raw, _mid, 1, retain, 1, datetime.now(UTC), time.monotonic())


def state(device: str, session: int, seq: int, firmware: str = "1.0.0", **extra: Any) -> Inbound:
    body = {
        "v": 1,
        "device_id": device,
        "key": {"session": session, "seq": seq},
        "firmware": firmware,
        "hardware_model": "ap-1",
        **extra,
    }
    return inbound(f"devices/{device}/state", body)


def presence(device: str, session: int, seq: int, status: str = "online") -> Inbound:
    body = {"v": 1, "device_id": device, "key": {"session": session, "seq": seq}, "status": status}
    return inbound(f"devices/{device}/presence", body, retain=True)


def job(device: str, job_id: str, session: int, seq: int, status: str = "downloading") -> Inbound:
    body = {
        "v": 1,
        "device_id": device,
        "job_id": job_id,
        "key": {"session": session, "seq": seq},
        "status": status,
        "progress": 10,
    }
    return inbound(f"devices/{device}/jobs/{job_id}/status", body)
