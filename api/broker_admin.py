"""Device accounts at the broker through Mosquitto's dynamic-security plugin.

Why this mechanism: it works against the real broker at run time, with no restart and
no file the api must share with the broker. Measured on Debian's Mosquitto 2.0.11: a
shared role with ``devices/%u/#`` denies everything (no ``%u`` substitution there), so
each device gets **its own role** granting ``publishClientSend``,
``publishClientReceive`` and ``subscribePattern`` on ``devices/{id}/#`` only; the
client's username and client id are both the device id. ``deleteClient`` also
disconnects a connected client.

The command builders are pure; :class:`BrokerAdmin` sends them over a
:class:`~api.broker_link.BrokerLink`.
"""

from __future__ import annotations

from typing import Any, Protocol

from api.errors import BrokerError, Conflict
from schemas.topics import device_filter


class ControlChannel(Protocol):
    async def control(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


def role_name(device_id: str) -> str:
    return f"device-{device_id}"


def create_device_commands(device_id: str, password: str) -> list[dict[str, Any]]:
    subtree = device_filter(device_id)
    acls = [
        {"acltype": kind, "topic": subtree, "priority": 0, "allow": True}
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]
    return [
        {"command": "createRole", "rolename": role_name(device_id), "acls": acls},
        {
            "command": "createClient",
            "username": device_id,
            "password": password,
            "clientid": device_id,
            "roles": [{"rolename": role_name(device_id)}],
        },
    ]


def delete_device_commands(device_id: str) -> list[dict[str, Any]]:
    return [
        {"command": "deleteClient", "username": device_id},
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


class BrokerAdmin:
    def __init__(self, channel: ControlChannel) -> None:
        self._channel = channel

    async def create_device(
        self, device_id: str, password: str, *, replace_stale: bool = True
    ) -> None:
        """Create the device's role and client.

        The caller has just inserted the device document (ids are unique there), so an
        existing broker client of that name is stale (e.g. a registration whose answer was
        lost): with ``replace_stale`` it is deleted and created again, once.
        """
        responses = await self._channel.control(create_device_commands(device_id, password))
        role, client = errors_of(responses[:1]), errors_of(responses[1:])
        if client and _already_exists(client[0]):
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
