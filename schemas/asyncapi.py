"""The AsyncAPI 3.0 document of the device protocol, built from the pydantic models.

The document describes the protocol from the device's side: a device *sends* presence,
state, job status and command results, and *receives* its config, job commands and
command requests. Payload schemas are the
models' JSON schemas (validation mode), so the document cannot drift from the code;
``docs/asyncapi.json`` is its checked-in rendering (``outpost schemas asyncapi`` rewrites
it, ``--check`` fails when it is stale, and so does a unit test).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.examples import EXAMPLES
from schemas.protocol import MAX_PAYLOAD_BYTES, MODELS, PROTOCOL_VERSION, WILL_SEQ
from schemas.provisioning import (
    MAX_REPLY_BYTES,
    MAX_REQUEST_BYTES,
    Identity,
    ProvisionReply,
    ProvisionRequest,
)
from schemas.topics import (
    CLAIM_ID_PATTERN,
    COMMAND_ID_PATTERN,
    DEVICE_ID_PATTERN,
    JOB_ID_PATTERN,
    REPLY_TOKEN_PATTERN,
    Channel,
)

__all__ = ["DOCUMENT_PATH", "build_document", "is_current", "render"]

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"
_MQTT_BINDING = "0.2.0"


@dataclass(frozen=True, slots=True)
class _ChannelDoc:
    address: str
    retain: bool
    summary: str


_CHANNELS: dict[Channel, _ChannelDoc] = {
    Channel.PRESENCE: _ChannelDoc(
        "devices/{deviceId}/presence",
        True,
        "Online on connect; offline from the Last Will (or a graceful shutdown).",
    ),
    Channel.STATE: _ChannelDoc(
        "devices/{deviceId}/state",
        False,
        "Firmware, hardware model, applied config version and hash, uptime, counters.",
    ),
    Channel.CONFIG: _ChannelDoc(
        "devices/{deviceId}/config", True, "Desired WiFi configuration with its version and hash."
    ),
    Channel.JOB: _ChannelDoc(
        "devices/{deviceId}/jobs/{jobId}",
        False,
        "Upgrade command; MQTT message expiry equals the presigned URL's lifetime.",
    ),
    Channel.JOB_STATUS: _ChannelDoc(
        "devices/{deviceId}/jobs/{jobId}/status", False, "Progress and outcome of one upgrade job."
    ),
    Channel.COMMAND: _ChannelDoc(
        "devices/{deviceId}/commands/{commandId}",
        False,
        "Command request (MQTT v5): Response Topic .../result, Correlation Data = the command "
        "id, Message Expiry Interval ending at expires_at. Never retained.",
    ),
    Channel.COMMAND_RESULT: _ChannelDoc(
        "devices/{deviceId}/commands/{commandId}/result",
        False,
        "The device's one answer to a command, with the request's Correlation Data. Never "
        "retained.",
    ),
}

_DESCRIPTION = f"""\
MQTT v5, QoS 1, JSON payloads (UTF-8). A device's id is its MQTT client id and username.

Every payload carries a schema version `v` (this is version {PROTOCOL_VERSION}); fields a \
receiver does not know are ignored, except inside `config`, where they make the config \
invalid (a device must not apply a config it only half understands).

**Ordering.** Device messages carry `key = {{session, seq}}`, compared as a pair: `session` \
grows with every MQTT connection (kept across reboots), `seq` starts at 1 per session and \
grows per message across all channels. The Last Will is set at CONNECT with \
`seq = {WILL_SEQ}` (2^53-1): newer than everything of its session, older than everything of \
the next. Receivers keep the newest key per device and channel (per job for job status) \
and drop the rest.

**Config hash.** `config.hash` is the SHA-256 of the config's canonical JSON (keys sorted, \
no whitespace, defaults included, UTF-8); a message whose hash does not match is invalid.
"""


def _asyncapi_schema(node: Any) -> Any:
    """JSON Schema from pydantic → AsyncAPI Schema Object.

    The one difference that matters: AsyncAPI's ``discriminator`` is the property name (a
    string), where pydantic writes OpenAPI's ``{"propertyName", "mapping"}`` object.
    """
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _asyncapi_schema(value) for key, value in node.items()}
    if isinstance(out.get("discriminator"), dict):
        out["discriminator"] = out["discriminator"]["propertyName"]
    return out


# Zero-touch provisioning: a device holding only a claim secret asks for its identity.
_PROVISIONING = {
    "provisionRequest": (
        "provision/{claimId}/request",
        "send",
        ProvisionRequest,
        "Ask for an identity as the claim's account (claim/{claimId}, password: the claim "
        "secret); MQTT v5 Response Topic provision/{claimId}/reply/{token} and Correlation "
        "Data are required. Never retained.",
        MAX_REQUEST_BYTES,
    ),
    "provisionReply": (
        "provision/{claimId}/reply/{token}",
        "receive",
        ProvisionReply,
        "The identity sealed to the request's reply key (an Identity once opened), or a "
        "refusal with its reason. Never retained.",
        MAX_REPLY_BYTES,
    ),
}


def _provisioning() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Channels, operations and messages of the provisioning exchange."""
    channels, operations, messages = {}, {}, {}
    for name, (address, action, model, summary, limit) in _PROVISIONING.items():
        params = {"claimId": {"$ref": "#/components/parameters/claimId"}}
        if "{token}" in address:
            params["token"] = {"$ref": "#/components/parameters/token"}
        channels[name] = {
            "address": address,
            "summary": summary,
            "parameters": params,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"{action}{name[0].upper()}{name[1:]}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
            "bindings": {"mqtt": {"qos": 1, "retain": False, "bindingVersion": _MQTT_BINDING}},
        }
        messages[name] = {
            "name": name,
            "title": model.__name__,
            "summary": summary,
            "description": f"{(model.__doc__ or '').strip()}\n\nAt most {limit} bytes.",
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
            "x-max-payload-bytes": limit,
        }
    return channels, operations, messages


def _schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [*MODELS.values(), ProvisionRequest, ProvisionReply, Identity]
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    return {name: _asyncapi_schema(schema) for name, schema in sorted(top["$defs"].items())}


def _parameters(channel: Channel) -> dict[str, Any]:
    params = {"deviceId": {"$ref": "#/components/parameters/deviceId"}}
    if channel in (Channel.JOB, Channel.JOB_STATUS):
        params["jobId"] = {"$ref": "#/components/parameters/jobId"}
    if channel in (Channel.COMMAND, Channel.COMMAND_RESULT):
        params["commandId"] = {"$ref": "#/components/parameters/commandId"}
    return params


def _channel(channel: Channel) -> dict[str, Any]:
    doc = _CHANNELS[channel]
    return {
        "address": doc.address,
        "summary": doc.summary,
        "parameters": _parameters(channel),
        "messages": {channel.value: {"$ref": f"#/components/messages/{channel.value}"}},
    }


def _operation(channel: Channel) -> tuple[str, dict[str, Any]]:
    action = "send" if channel.from_device else "receive"
    name = f"{action}{''.join(p.title() for p in channel.value.split('_'))}"
    return name, {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel.value}"},
        "summary": _CHANNELS[channel].summary,
        "messages": [{"$ref": f"#/channels/{channel.value}/messages/{channel.value}"}],
        "bindings": {
            "mqtt": {"qos": 1, "retain": _CHANNELS[channel].retain, "bindingVersion": _MQTT_BINDING}
        },
    }


def _message(channel: Channel) -> dict[str, Any]:
    model = MODELS[channel]
    limit = MAX_PAYLOAD_BYTES[channel]
    return {
        "name": channel.value,
        "title": model.__name__,
        "summary": _CHANNELS[channel].summary,
        "description": f"{(model.__doc__ or '').strip()}\n\nAt most {limit} bytes.",
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
        "examples": [{"name": f"{channel.value}-example", "payload": EXAMPLES[channel][1]}],
        "x-max-payload-bytes": limit,
    }


def _server() -> dict[str, Any]:
    return {
        "host": "broker.example.net:8883",
        "protocol": "secure-mqtt",
        "protocolVersion": "5",
        "description": "Any MQTT v5 broker with shared subscriptions (Mosquitto, EMQX, "
        "HiveMQ, AWS IoT Core).",
        "bindings": {
            "mqtt": {
                "lastWill": {
                    "topic": "devices/{deviceId}/presence",
                    "qos": 1,
                    "retain": True,
                    "message": "PresenceMessage: status offline, "
                    "reason connection_lost, key {session, seq: 2^53-1}",
                },
                "bindingVersion": _MQTT_BINDING,
            }
        },
    }


def build_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document, as a JSON-ready dict."""
    channels = list(Channel)
    provisioning, provision_ops, provision_messages = _provisioning()
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Outpost device protocol",
            "version": str(PROTOCOL_VERSION),
            "description": _DESCRIPTION,
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {"broker": _server()},
        "channels": {c.value: _channel(c) for c in channels} | provisioning,
        "operations": dict(_operation(c) for c in channels) | provision_ops,
        "components": {
            "schemas": _schemas(),
            "messages": {c.value: _message(c) for c in channels} | provision_messages,
            "parameters": {
                "deviceId": {"description": f"Device id, `{DEVICE_ID_PATTERN}`"},
                "jobId": {"description": f"Job id, `{JOB_ID_PATTERN}`"},
                "claimId": {"description": f"Claim id, `{CLAIM_ID_PATTERN}`"},
                "token": {
                    "description": f"The requester's random reply token, `{REPLY_TOKEN_PATTERN}`"
                },
                "commandId": {"description": f"Command id, `{COMMAND_ID_PATTERN}`"},
            },
        },
    }


def render() -> str:
    """The checked-in text: indented JSON, UTF-8, trailing newline."""
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


def is_current(path: Path = DOCUMENT_PATH) -> bool:
    """Whether ``path`` holds exactly what :func:`render` produces now."""
    try:
        return path.read_text(encoding="utf-8") == render()
    except FileNotFoundError:
        return False
