"""Fleet simulator: :class:`Fleet` (library) and ``outpost sim`` (command)."""

from device.sim.fleet import Broker, Fleet, FleetOptions, FleetStats, SimDevice
from device.sim.provision import Provisioned, provision_fleet, serials

__all__ = [
    "Broker",
    "Fleet",
    "FleetOptions",
    "FleetStats",
    "Provisioned",
    "SimDevice",
    "provision_fleet",
    "serials",
]
