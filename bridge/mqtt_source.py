"""MQTT transport: paho-mqtt 2.x with manual acknowledgements, on the asyncio event loop.

paho's socket is driven by the event loop (:class:`outpost.mqtt.LoopDriver`): no network
thread, so paho's callbacks run on the loop and own the queue and flags directly. (A
network thread next to the loop cost the bridge half its database rate while messages
arrived: each MongoDB response waited for the MQTT thread to release the interpreter
lock.)

Why paho and not aiomqtt: a QoS 1 message must be acknowledged only after its MongoDB
write succeeded; paho 2.x supports that (``manual_ack=True``, ``client.ack(mid, qos)``),
aiomqtt 2.x acknowledges on receipt. paho is also faster here (bench/RESULTS.md).

Session: MQTT v5, clean start off, a session expiry of hours, and a client receive
maximum that bounds how many unacknowledged messages the broker sends us (that is the
bridge's back-pressure: while MongoDB is down nothing is acked and the broker stops).
A lost connection is re-established by the driver (jittered exponential back-off); the
broker then redelivers what was not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.errors import MqttError
from bridge.inbound import Inbound
from outpost.mqtt import LoopDriver, paho_client
from outpost.settings import MqttSettings

__all__ = ["MqttSource", "SessionOptions"]


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """The MQTT session a source keeps: who it is, what it subscribes, how it is kept."""

    client_id: str
    subscriptions: tuple[str, ...]
    optional: tuple[str, ...] = ()
    """Subscriptions the broker may refuse (logged, not fatal)."""
    clean_start: bool = False
    session_expiry_s: int = 6 * 3600
    receive_maximum: int = 1000
    """Unacknowledged messages the broker may send: the back-pressure."""
    connect_timeout: float = 10.0


class MqttSource:
    """An async context manager: connected and subscribed inside, disconnected after.

    Messages arrive on :attr:`messages`; ``None`` there means "no more" (after
    :meth:`close_intake`). Call :meth:`ack` for each message once it is safe.
    """

    def __init__(
        self, settings: MqttSettings, session: SessionOptions, *, logger: logging.Logger
    ) -> None:
        self._settings = settings
        self.client_id = self._client_id = session.client_id
        self._subscriptions = [*session.subscriptions, *session.optional]
        self._optional = set(session.optional)
        self.on_connected: Callable[[bool, int, datetime | None], None] | None = None
        """Called at each CONNACK: session present, generation, when the last one was lost."""
        self.on_state: Callable[[bool], None] | None = None
        """Called when :attr:`connected` changes: subscribed (True), connection lost (False)."""
        self.lost_at: datetime | None = None
        self._log = logger
        self._clean_start = session.clean_start
        self._session_expiry = session.session_expiry_s
        self._receive_maximum = session.receive_maximum
        self._connect_timeout = session.connect_timeout
        self.messages: asyncio.Queue[Inbound | None] = asyncio.Queue()
        self.generation = 0
        self.connected = False
        self._intake_open = True
        self._subscribed = asyncio.Event()
        self._failure: MqttError | None = None
        self._client: paho.Client | None = None
        self._driver: LoopDriver | None = None
        self._running: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        client = self._client = self._build_client()
        self._driver = LoopDriver(client, self._connect, self._log)
        self._running = asyncio.create_task(
            self._driver.run(on_connect_error=self._connect_error), name="bridge mqtt"
        )
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

    def _connect(self) -> None:
        """The blocking part of a (re)connect; runs in a worker thread."""
        assert self._client is not None
        self._client.connect(
            self._settings.host,
            self._settings.port,
            keepalive=self._settings.keepalive,
            clean_start=self._clean_start,
            properties=self._connect_properties(),
        )

    def _connect_error(self, exc: BaseException) -> None:
        if not self._subscribed.is_set():  # the first connect: fail the start
            self._failure = MqttError(f"cannot connect to {self._settings.url}: {exc}")
            self._subscribed.set()

    async def _wait_subscribed(self) -> None:
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
        driver, running = self._driver, self._running
        self._driver = self._running = None
        if driver is None or running is None:
            return
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry
        await driver.close(props)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        self._client = None

    def _build_client(self) -> paho.Client:
        client = paho_client(self._settings.endpoint(), self._client_id, manual_ack=True)
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

    # -- used by the bridge ------------------------------------------------------------

    def ack(self, inbound: Inbound) -> bool:
        """Acknowledge one message; False if it came on an earlier connection (see Inbound)."""
        return self.ack_packet(inbound.mid, inbound.qos, inbound.generation)

    def ack_packet(self, mid: int, qos: int, generation: int) -> bool:
        """:meth:`ack` by the fields it needs (what the intake process is sent)."""
        if qos == 0 or self._client is None or generation != self.generation:
            return False
        return self._client.ack(mid, qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def close_intake(self) -> None:
        """Stop taking messages (those arriving later are never acked: the broker keeps
        them in our session) and put the end marker on the queue."""
        if self._intake_open:
            self._intake_open = False
            self.messages.put_nowait(None)

    # -- paho callbacks (on the event loop) --------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._fail(f"CONNACK {reason}")
            return
        self.generation += 1
        client.subscribe([(s, SubscribeOptions(qos=1)) for s in self._subscriptions])
        session_present = bool(getattr(flags, "session_present", False))
        if self.on_connected is not None:
            self.on_connected(session_present, self.generation, self.lost_at)
        self._log.info(
            "mqtt connected",
            extra={
                "client_id": self._client_id,
                "session_present": bool(getattr(flags, "session_present", False)),
                "generation": self.generation,
            },
        )

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        pairs = zip(self._subscriptions, reasons, strict=False)
        refused = [(t, r) for t, r in pairs if r.is_failure]
        for topic in sorted({t for t, _ in refused} & self._optional):
            self._log.info("optional subscription refused", extra={"topic": topic})
        failed = [f"{t}: {r}" for t, r in refused if t not in self._optional]
        if failed:
            self._fail(f"SUBACK refused: {', '.join(failed)}")
            return
        self._set_connected(True)
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._intake_open:
            self.messages.put_nowait(
                Inbound(
                    message.topic,
                    bytes(message.payload),
                    message.mid,
                    message.qos,
                    bool(message.retain),
                    self.generation,
                    datetime.now(UTC),
                    time.monotonic(),
                )
            )

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self.lost_at = datetime.now(UTC)
        self._set_connected(False)
        self._log.warning(
            "mqtt disconnected", extra={"client_id": self._client_id, "why": str(reason)}
        )

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        if self.on_state is not None:
            self.on_state(connected)

    def _fail(self, why: str) -> None:
        self._log.error("mqtt refused", extra={"client_id": self._client_id, "why": why})
        if not self._subscribed.is_set():
            self._failure = MqttError(why)
            self._subscribed.set()
