"""MQTT transport: paho-mqtt 2.x with manual acknowledgements, handing messages to asyncio.

paho runs its network loop in its own thread. Callbacks never touch bridge state: each
one schedules a function on the event loop with ``loop.call_soon_threadsafe`` and the
event loop alone owns the queue and the flags. Received messages are handed over in
bulk: the paho thread appends them to a list under a lock and wakes the loop once per
burst, not once per message (each wake-up costs both threads the interpreter lock; at
thousands of messages per second that slowed the bridge's own database writes).

Why paho and not aiomqtt: a QoS 1 message must be acknowledged only after its MongoDB
write succeeded; paho 2.x supports that (``manual_ack=True``, ``client.ack(mid, qos)``),
aiomqtt 2.x acknowledges on receipt. paho is also faster here (bench/RESULTS.md).

Session: MQTT v5, clean start off, a session expiry of hours, and a client receive
maximum that bounds how many unacknowledged messages the broker sends us (that is the
bridge's back-pressure: while MongoDB is down nothing is acked and the broker stops).

paho's network loop uses ``select()``, which cannot watch descriptors above 1024: run
the bridge in a process of its own, not next to thousands of other sockets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.errors import MqttError
from bridge.inbound import Inbound
from outpost.settings import MqttSettings

__all__ = ["MqttSource"]


class MqttSource:
    """An async context manager: connected and subscribed inside, disconnected after.

    Messages arrive on :attr:`messages`; ``None`` there means "no more" (after
    :meth:`close_intake`). Call :meth:`ack` for each message once it is safe.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        subscriptions: Sequence[str],
        logger: logging.Logger,
        clean_start: bool = False,
        session_expiry_s: int = 6 * 3600,
        receive_maximum: int = 1000,
        connect_timeout: float = 10.0,
    ) -> None:
        self._settings = settings
        self._client_id = client_id
        self._subscriptions = list(subscriptions)
        self._log = logger
        self._clean_start = clean_start
        self._session_expiry = session_expiry_s
        self._receive_maximum = receive_maximum
        self._connect_timeout = connect_timeout
        self.messages: asyncio.Queue[Inbound | None] = asyncio.Queue()
        self.generation = 0
        self._rx_generation = 0  # the paho thread's count of connections
        self._incoming: list[tuple[Any, ...]] = []
        self._handover = threading.Lock()
        self._wake_pending = False
        self.connected = False
        self._intake_open = True
        self._subscribed: asyncio.Event | None = None
        self._failure: MqttError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._subscribed = asyncio.Event()
        self._client = self._build_client()
        try:
            self._client.connect_async(
                self._settings.host,
                self._settings.port,
                keepalive=self._settings.keepalive,
                clean_start=self._clean_start,
                properties=self._connect_properties(),
            )
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {self._settings.url}: {exc}") from exc
        self._client.loop_start()
        try:
            await self._wait_subscribed()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()

    async def _wait_subscribed(self) -> None:
        assert self._subscribed is not None
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._subscribed.wait()
        except TimeoutError:
            raise MqttError(
                f"no CONNACK/SUBACK from {self._settings.url} within {self._connect_timeout}s"
            ) from None
        if self._failure is not None:
            raise self._failure

    async def _shutdown(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry
        client.disconnect(properties=props)
        await asyncio.to_thread(client.loop_stop)

    def _build_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        if self._settings.username:
            client.username_pw_set(self._settings.username, self._settings.password_value)
        if self._settings.tls:
            client.tls_set(ca_certs=self._settings.ca_file)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry
        props.ReceiveMaximum = self._receive_maximum
        return props

    # -- used from the event loop ----------------------------------------------------

    def ack(self, inbound: Inbound) -> bool:
        """Acknowledge one message; False if it came on an earlier connection (see Inbound)."""
        if inbound.qos == 0 or self._client is None or inbound.generation != self.generation:
            return False
        rc = self._client.ack(inbound.mid, inbound.qos)
        return rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def close_intake(self) -> None:
        """Stop taking messages (those arriving later are never acked: the broker keeps
        them in our session) and put the end marker on the queue."""
        if self._intake_open:
            self._intake_open = False
            self.messages.put_nowait(None)

    # -- paho callbacks (network thread): only hand over to the loop --------------------

    def _call(self, fn: Any, *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._call(self._failed, f"CONNACK {reason}")
            return
        options = SubscribeOptions(qos=1)
        client.subscribe([(s, options) for s in self._subscriptions])
        self._rx_generation += 1
        self._call(
            self._connected,
            bool(getattr(flags, "session_present", False)),
            self._rx_generation,
        )

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._call(self._failed, f"SUBACK refused: {', '.join(failed)}")
        else:
            self._call(self._on_subscribed)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        item = (
            message.topic,
            message.payload,
            message.mid,
            message.qos,
            bool(message.retain),
            self._rx_generation,
            datetime.now(UTC),
            time.monotonic(),
        )
        with self._handover:
            self._incoming.append(item)
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._call(self._take_incoming)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._call(self._disconnected, str(reason))

    # -- event-loop side of the callbacks ---------------------------------------------

    def _connected(self, session_present: bool, generation: int) -> None:
        self.generation = generation
        self._log.info(
            "mqtt connected",
            extra={
                "client_id": self._client_id,
                "session_present": session_present,
                "generation": self.generation,
            },
        )

    def _on_subscribed(self) -> None:
        self.connected = True
        assert self._subscribed is not None
        self._subscribed.set()

    def _failed(self, why: str) -> None:
        self._log.error("mqtt refused", extra={"client_id": self._client_id, "why": why})
        self._failure = MqttError(why)
        assert self._subscribed is not None
        self._subscribed.set()

    def _disconnected(self, why: str) -> None:
        self.connected = False
        self._log.warning("mqtt disconnected", extra={"client_id": self._client_id, "why": why})

    def _take_incoming(self) -> None:
        with self._handover:
            items, self._incoming = self._incoming, []
            self._wake_pending = False
        if self._intake_open:
            for item in items:
                self.messages.put_nowait(Inbound(*item))
