"""A provisioning claim's broker account (dynamic security), confined to provisioning.

Username ``claim/<id>``, password the claim secret, role ``claim-<id>``:

- publish only ``provision/<id>/request``;
- subscribe only ``provision/<id>/reply/+``, and receive nothing else (``#`` denied at
  the lowest priority).

Measured on Mosquitto 2.0.11 (``tests/integration/api/test_provisioning.py``): dynamic
security substitutes neither ``%c`` nor ``%u`` in ACL topics, and a ``+`` pattern lets the
account subscribe to the wildcard itself, so the account *can* read every reply of its
claim: replies are therefore sealed to a key only the requester holds
(:mod:`outpost.sealing`). The account cannot be bound to one client id (all devices of a
batch use it at once), and Mosquitto lets a client of another account take over a
session by its client id (it hands over the session and its queued messages): the
receive deny on ``#`` is what keeps a device's queued config or job away from a claim
holder who connects with that device's id.
"""

from __future__ import annotations

from typing import Any

from api.broker_admin import ControlChannel, errors_of
from api.errors import BrokerError
from schemas.provisioning import claim_username
from schemas.topics import claim_reply_filter, provision_request_topic

__all__ = ["claim_acls", "create_claim_account", "delete_claim_account"]


def claim_role(claim_id: str) -> str:
    return f"claim-{claim_id}"


def claim_acls(claim_id: str) -> list[dict[str, Any]]:
    replies = claim_reply_filter(claim_id)
    return [
        {"acltype": "publishClientSend", "topic": provision_request_topic(claim_id)},
        {"acltype": "subscribePattern", "topic": replies},
        {"acltype": "publishClientReceive", "topic": replies},
    ]


def _acls(claim_id: str) -> list[dict[str, Any]]:
    allowed = [{**a, "priority": 1, "allow": True} for a in claim_acls(claim_id)]
    deny = {"acltype": "publishClientReceive", "topic": "#", "priority": 0, "allow": False}
    return [*allowed, deny]


def create_claim_commands(claim_id: str, secret: str) -> list[dict[str, Any]]:
    return [
        {"command": "createRole", "rolename": claim_role(claim_id), "acls": _acls(claim_id)},
        {
            "command": "createClient",
            "username": claim_username(claim_id),
            "password": secret,
            "roles": [{"rolename": claim_role(claim_id)}],
        },
    ]


def delete_claim_commands(claim_id: str) -> list[dict[str, Any]]:
    """Delete the client first (it disconnects the claim's sessions), then the role
    (Mosquitto 2.0 crashes later when a held role is deleted: eclipse-mosquitto#2660)."""
    return [
        {"command": "deleteClient", "username": claim_username(claim_id)},
        {"command": "deleteRole", "rolename": claim_role(claim_id)},
    ]


async def create_claim_account(channel: ControlChannel, claim_id: str, secret: str) -> None:
    errors = errors_of(await channel.control(create_claim_commands(claim_id, secret)))
    if errors:
        raise BrokerError("; ".join(errors))


async def delete_claim_account(channel: ControlChannel, claim_id: str) -> None:
    errors = errors_of(await channel.control(delete_claim_commands(claim_id)))
    real = [e for e in errors if "not found" not in e.lower()]
    if real:
        raise BrokerError("; ".join(real))
