"""Reference device agent and fleet simulator.

- :mod:`device.behaviour`: every decision a device makes (backoff with full jitter,
  ordering keys, config decisions, the upgrade job state machine, image checks), pure
  and shared by both below;
- :mod:`device.agent`: the reference agent (paho-mqtt 2.x, synchronous, one thread),
  ``python -m device.agent --help``; with :mod:`device.storage` (its JSON state file)
  and :mod:`device.download` (streaming, resumable firmware download);
- :mod:`device.sim`: thousands of simulated devices in one asyncio process (aiomqtt),
  as a library (:class:`device.sim.Fleet`) and as ``outpost sim``.
"""
