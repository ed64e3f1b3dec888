"""Simulated devices out of the box: each holds only the claim secret and its serial,
asks for its identity (:func:`device.provisioning.provision`) and then runs as a fleet
device with the account it got (``outpost sim --claim``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from device.provisioning import provision
from device.sim.fleet import Broker
from outpost.mqtt import Endpoint
from outpost.sealing import IdentityKey
from schemas.provisioning import Identity

__all__ = ["Provisioned", "provision_fleet", "serials"]


def serials(prefix: str, count: int) -> list[str]:
    """``<prefix>-000000``, ``-000001``, ...: the serials of a simulated batch."""
    return [f"{prefix}-{i:06d}" for i in range(count)]


@dataclass
class Provisioned:
    """What a batch got: an identity per serial, and how long it took."""

    identities: dict[str, Identity] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ids(self) -> list[str]:
        return [i.device_id for i in self.identities.values()]

    def fleet_broker(self, broker: Broker) -> Broker:
        """``broker`` with every provisioned device's own account."""
        accounts = {i.device_id: i.password for i in self.identities.values()}
        return Broker(broker.host, broker.port, None, None, broker.tls, broker.ca_file, accounts)


async def provision_fleet(
    broker: Broker,
    claim_secret: str,
    batch: Sequence[str],
    *,
    hardware_model: str = "sim-ap",
    concurrency: int = 32,
    logger: logging.Logger | None = None,
) -> Provisioned:
    """Provision every serial of ``batch`` through ``broker`` (``concurrency`` at once);
    a final refusal of any serial raises :class:`~device.errors.Refused`."""
    slots = asyncio.Semaphore(concurrency)
    where = Endpoint(broker.host, broker.port, broker.tls, broker.ca_file)
    started = time.monotonic()

    async def one(serial: str) -> tuple[str, Identity]:
        async with slots:
            found = await provision(
                where, claim_secret, serial, hardware_model, IdentityKey(), logger=logger
            )
        return serial, found

    done = Provisioned(dict(await asyncio.gather(*(one(s) for s in batch))))
    done.seconds = time.monotonic() - started
    return done
