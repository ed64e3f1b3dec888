"""Device accounts at the broker through Mosquitto's dynamic-security plugin.

Why this mechanism: it works against the real broker at run time, with no restart and
no file the api must share with the broker. Measured on Debian's Mosquitto 2.0.11: a
shared role with ``devices/%u/#`` denies everything (no ``%u`` substitution there), so
each device gets **its own role**. The role confines the device to its own channels,
each in one direction (:func:`device_acls`): it may publish only its presence, state and
job status, and subscribe only to its config and jobs. Everything else is denied by the
broker's default ACL access (``broker/roles.json``); a denied QoS 1 publish gets PUBACK
reason 135 (not authorized) and reaches nobody. The client's username and client id are
both the device id. ``deleteClient`` and ``setClientPassword`` also disconnect a
connected client.

The command builders are pure; :class:`BrokerAdmin` sends them over a
:class:`~api.broker_link.BrokerLink`. :class:`ExternalAccounts` is the choice for a broker
whose device accounts are managed elsewhere (``OUTPOST_API_BROKER_ACCOUNTS=external``:
EMQX with its own authentication database, AWS IoT Core with certificates, a broker
without Mosquitto's ``$CONTROL`` API): the api then keeps its registry and passwords, and
creates, rotates and deletes nothing at the broker.
"""

from __future__ import annotations

from typing import Any, Protocol

from api.errors import BrokerError, Conflict
from schemas.topics import Channel, channel_filter


class ControlChannel(Protocol):
    async def control(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


def role_name(device_id: str) -> str:
    return f"device-{device_id}"


def device_acls(device_id: str) -> list[dict[str, Any]]:
    """One device's ACL: each of its channels in its one direction, nothing else."""
    acls = []
    for channel in Channel:
        kinds = (
            ("publishClientSend",)
            if channel.from_device
            else ("subscribePattern", "publishClientReceive")
        )
        topic = channel_filter(channel, device_id)
        acls += [{"acltype": k, "topic": topic, "priority": 0, "allow": True} for k in kinds]
    return acls


LISTENER_SUFFIX = "listen"


def listener_name(device_id: str) -> str:
    """The second account of a device: ``{id}/listen``, username and client id both.

    A device that cannot hold one session for everything (a shell script: ``mosquitto_sub``
    to listen, ``mosquitto_pub`` to report) listens with this one, the same password and
    the same role, so the two never take each other's session over. Mosquitto binds one
    client id per account, and an account without that binding could take over another
    device's session, so the second client id is a second account.
    """
    return f"{device_id}/{LISTENER_SUFFIX}"


def _client(username: str, password: str, device_id: str) -> dict[str, Any]:
    return {
        "command": "createClient",
        "username": username,
        "password": password,
        "clientid": username,
        "roles": [{"rolename": role_name(device_id)}],
    }


def create_device_commands(device_id: str, password: str) -> list[dict[str, Any]]:
    return [
        {"command": "createRole", "rolename": role_name(device_id), "acls": device_acls(device_id)},
        _client(device_id, password, device_id),
        _client(listener_name(device_id), password, device_id),
    ]


def reset_device_commands(device_id: str, password: str) -> list[dict[str, Any]]:
    """New password and the current ACL for an existing account (rotation, re-provision):
    the role is created again so an account made under older rules gets today's.

    The first :data:`RESET_REMOVALS` commands may find nothing to remove. The role is
    taken off its clients before it is deleted: Mosquitto 2.0 crashes later when a role
    is deleted while a client still holds it (eclipse-mosquitto/mosquitto#2660).
    """
    role, listener = role_name(device_id), listener_name(device_id)
    return [
        {"command": "removeClientRole", "username": device_id, "rolename": role},
        {"command": "deleteClient", "username": listener},
        {"command": "deleteRole", "rolename": role},
        {"command": "createRole", "rolename": role, "acls": device_acls(device_id)},
        {"command": "addClientRole", "username": device_id, "rolename": role},
        set_password_command(device_id, password),
        _client(listener, password, device_id),
    ]


RESET_REMOVALS = 3


def refresh_acl_commands(device_id: str) -> list[dict[str, Any]]:
    """Add today's ACL to an existing device role, in place: no disconnect, no new
    password. An entry the role already has is refused as existing (harmless)."""
    return [
        {"command": "addRoleACL", "rolename": role_name(device_id), **acl}
        for acl in device_acls(device_id)
    ]


def delete_device_commands(device_id: str) -> list[dict[str, Any]]:
    return [
        {"command": "deleteClient", "username": device_id},
        {"command": "deleteClient", "username": listener_name(device_id)},
        {"command": "deleteRole", "rolename": role_name(device_id)},
    ]


def set_password_command(device_id: str, password: str) -> dict[str, Any]:
    return {"command": "setClientPassword", "username": device_id, "password": password}


def errors_of(responses: list[dict[str, Any]]) -> list[str]:
    return [f"{r.get('command')}: {r['error']}" for r in responses if r.get("error")]


def _already_exists(error: str) -> bool:
    return "already exists" in error.lower()


def _not_found(error: str) -> bool:
    return "not found" in error.lower()


class DeviceAccounts(Protocol):
    """What the routes ask of the broker's account store."""

    async def create_device(self, device_id: str, password: str) -> None: ...
    async def delete_device(self, device_id: str) -> None: ...
    async def reset_device(self, device_id: str, password: str) -> None: ...


class ExternalAccounts:
    """Device accounts are the broker operator's business: every call does nothing.

    The password a registration returns is still stored (hashed) in the registry, so an
    external authenticator (e.g. EMQX's HTTP or MongoDB authentication) can check it;
    a rotation does not disconnect the device's session at the broker.
    """

    async def create_device(self, device_id: str, password: str) -> None:
        return None

    async def delete_device(self, device_id: str) -> None:
        return None

    async def reset_device(self, device_id: str, password: str) -> None:
        return None


class BrokerAdmin:
    def __init__(self, channel: ControlChannel) -> None:
        self._channel = channel

    async def create_device(
        self, device_id: str, password: str, *, replace_stale: bool = True
    ) -> None:
        """Create the device's role and its two clients (``{id}`` and ``{id}/listen``).

        The caller has just inserted the device document (ids are unique there), so an
        existing broker client of that name is stale (e.g. a registration whose answer was
        lost): with ``replace_stale`` it is deleted and created again, once.
        """
        responses = await self._channel.control(create_device_commands(device_id, password))
        role, client = errors_of(responses[:1]), errors_of(responses[1:])
        if any(_already_exists(e) for e in client):
            if not replace_stale:
                raise Conflict(f"device {device_id!r} already has a broker account")
            await self.delete_device(device_id)
            await self.create_device(device_id, password, replace_stale=False)
            return
        errors = [e for e in role if not _already_exists(e)] + client
        if errors:
            raise BrokerError("; ".join(errors))

    async def delete_device(self, device_id: str) -> None:
        errors = errors_of(await self._channel.control(delete_device_commands(device_id)))
        real = [e for e in errors if not _not_found(e)]
        if real:
            raise BrokerError("; ".join(real))

    async def set_password(self, device_id: str, password: str) -> None:
        errors = errors_of(await self._channel.control([set_password_command(device_id, password)]))
        if errors:
            raise BrokerError("; ".join(errors))

    async def refresh_acls(self, device_ids: list[str], per_message: int = 10) -> int:
        """Give existing device accounts today's ACL (e.g. the command topics, for accounts
        made before them); returns how many entries were missing and added. Roles that
        do not exist (a device never provisioned at this broker) are reported as errors."""
        added = 0
        for start in range(0, len(device_ids), per_message):
            commands = [
                c for d in device_ids[start : start + per_message] for c in refresh_acl_commands(d)
            ]
            errors = errors_of(await self._channel.control(commands))
            real = [e for e in errors if not _already_exists(e)]
            if real:
                raise BrokerError("; ".join(real[:5]))
            added += len(commands) - len(errors)
        return added

    async def reset_device(self, device_id: str, password: str) -> None:
        """New password, today's ACL, and the device's sessions disconnected."""
        responses = await self._channel.control(reset_device_commands(device_id, password))
        removals = errors_of(responses[:RESET_REMOVALS])  # may not exist (older accounts)
        real = [e for e in removals if not _not_found(e)] + errors_of(responses[RESET_REMOVALS:])
        if real:
            raise BrokerError("; ".join(real))
