"""One valid example message per channel: used by the AsyncAPI document and by tests.

Each example is ``(topic, payload)`` with the payload as the JSON object on the wire.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.protocol import WILL_SEQ, ConfigMessage
from schemas.topics import Channel, topic
from schemas.wifi import WifiConfig

__all__ = ["COMMAND_ID", "DEVICE_ID", "EXAMPLES", "JOB_ID", "example_wifi_config"]

DEVICE_ID = "ap-lobby-0042"
JOB_ID = "rollout-7f3a-1"
COMMAND_ID = "6566f0a1c2d3e4f5a6b7c8d9"
_AT = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)


def example_wifi_config() -> WifiConfig:
    return WifiConfig.model_validate(
        {
            "country": "DE",
            "radios": {
                "2.4GHz": {"channel": 6, "width": 20, "tx_power_dbm": 17},
                "5GHz": {"channel": 36, "width": 80},
                "6GHz": {"channel": "auto", "width": 160},
            },
            "ssids": [
                {
                    "name": "Lobby",
                    "bands": ["2.4GHz", "5GHz"],
                    "security": {"mode": "wpa2-psk", "passphrase": "welcome-guest-2026"},
                    "vlan": 20,
                },
                {
                    "name": "Lobby",
                    "bands": ["6GHz"],
                    "security": {"mode": "wpa3-sae", "passphrase": "welcome-guest-2026"},
                    "vlan": 20,
                },
                {
                    "name": "Staff",
                    "bands": ["5GHz"],
                    "hidden": True,
                    "vlan": 10,
                    "security": {
                        "mode": "wpa2-enterprise",
                        "radius": [{"host": "10.0.0.5", "secret": "s3cret-radius"}],
                    },
                },
            ],
            "management_vlan": 99,
            "ntp_servers": ["pool.ntp.org"],
            "syslog": {"host": "logs.example.net", "protocol": "tcp"},
        }
    )


_CONFIG = ConfigMessage.for_config(example_wifi_config(), version=3, issued_at=_AT)

EXAMPLES: dict[Channel, tuple[str, dict[str, Any]]] = {
    Channel.PRESENCE: (
        topic(Channel.PRESENCE, DEVICE_ID),
        {
            "v": 1,
            "device_id": DEVICE_ID,
            "key": {"session": 17, "seq": WILL_SEQ},
            "status": "offline",
            "reason": "connection_lost",
        },
    ),
    Channel.STATE: (
        topic(Channel.STATE, DEVICE_ID),
        {
            "v": 1,
            "device_id": DEVICE_ID,
            "key": {"session": 18, "seq": 2},
            "ts": "2026-11-26T09:31:05Z",
            "firmware": "7.2.1",
            "hardware_model": "AX3600",
            "config": {"version": 3, "hash": _CONFIG.hash, "status": "applied"},
            "uptime_s": 65,
            "counters": {"clients": 12, "tx_bytes": 1048576},
        },
    ),
    Channel.CONFIG: (
        topic(Channel.CONFIG, DEVICE_ID),
        _CONFIG.model_dump(mode="json", exclude_none=True),
    ),
    Channel.JOB: (
        topic(Channel.JOB, DEVICE_ID, JOB_ID),
        {
            "v": 1,
            "job_id": JOB_ID,
            "execution": 1,
            "issued_at": "2026-11-26T09:35:00Z",
            "firmware": {
                "version": "7.3.0",
                "size": 31457280,
                "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "url": "https://firmware.example.net/ax3600/7.3.0.bin?X-Amz-Signature=...",
                "url_expires_at": "2026-11-26T10:35:00Z",
            },
        },
    ),
    Channel.JOB_STATUS: (
        topic(Channel.JOB_STATUS, DEVICE_ID, JOB_ID),
        {
            "v": 1,
            "device_id": DEVICE_ID,
            "job_id": JOB_ID,
            "key": {"session": 18, "seq": 5},
            "status": "downloading",
            "progress": 42.5,
        },
    ),
    Channel.COMMAND: (
        topic(Channel.COMMAND, DEVICE_ID, COMMAND_ID),
        {
            "v": 1,
            "command_id": COMMAND_ID,
            "name": "ping",
            "args": {"target": "192.168.1.1", "count": 3},
            "issued_at": "2026-11-26T09:40:00Z",
            "expires_at": "2026-11-26T09:45:00Z",
        },
    ),
    Channel.COMMAND_RESULT: (
        topic(Channel.COMMAND_RESULT, DEVICE_ID, COMMAND_ID),
        {
            "v": 1,
            "device_id": DEVICE_ID,
            "command_id": COMMAND_ID,
            "key": {"session": 18, "seq": 9},
            "status": "succeeded",
            "output": {
                "target": "192.168.1.1",
                "sent": 3,
                "received": 3,
                "rtt_ms": [1.2, 0.9, 1.1],
            },
        },
    ),
}
