"""Fleet simulator: :class:`Fleet` (library) and ``outpost sim`` (command)."""

from device.sim.fleet import Broker, Fleet, FleetOptions, FleetStats, SimDevice

__all__ = ["Broker", "Fleet", "FleetOptions", "FleetStats", "SimDevice"]
