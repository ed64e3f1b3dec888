"""Every MQTT client Outpost makes: one factory, TLS honoured everywhere, one reconnect
policy, and paho driven by the asyncio event loop.

:class:`Endpoint` says where and as whom (``mqtt://`` or ``mqtts://`` with a CA bundle);
:func:`paho_client` and :func:`aiomqtt_client` build clients from it, always MQTT v5,
always with TLS verification when the URL says ``mqtts``. The bridge and the reference
agent use paho (manual acknowledgement, a device in its own process), the scheduler,
the api and the simulator aiomqtt; none builds a client by hand.

paho's own ``loop_start()`` runs the network in a thread of its own. In a process that
also does asyncio work (every Outpost service), that thread and the event loop take
turns on the interpreter lock: measured in the bridge, batches written while 2,000
messages arrived ran at half the database rate, because each response from MongoDB had
to wait for the MQTT thread to give the lock back (up to the 5 ms switch interval). Here,
as aiomqtt does, paho's socket is watched by the event loop (``add_reader`` /
``add_writer``) and ``loop_read`` / ``loop_write`` / ``loop_misc`` run on it; paho's
callbacks therefore run on the event loop too. Only the blocking TCP/TLS connect runs in a
worker thread. The event loop's selector also has no 1,024-descriptor limit, unlike the
``select()`` of paho's thread.

:class:`LoopDriver` attaches one paho client; :meth:`LoopDriver.run` keeps it connected,
reconnecting with :func:`reconnect_delay` (exponential, capped, jittered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import select
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

__all__ = ["Endpoint", "LoopDriver", "aiomqtt_client", "paho_client", "reconnect_delay"]

READ_BURST = 64  # packets read per readable event at most, so other work still runs


def _more_to_read(sock: Any) -> bool:
    """Whether ``sock`` has bytes waiting (an SSL socket may hold decoded ones)."""
    if sock is None:
        return False
    pending = getattr(sock, "pending", None)
    if pending is not None and pending() > 0:
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class Endpoint:
    """A broker and an account: what every client of ours is built from."""

    host: str
    port: int
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ca_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> Endpoint:
        """``mqtt://[user:pass@]host[:port]`` or ``mqtts://...``; explicit credentials win."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {url!r}")
        tls = parts.scheme == "mqtts"
        return cls(
            parts.hostname,
            parts.port or (8883 if tls else 1883),
            tls,
            ca_file,
            username or (unquote(parts.username) if parts.username else None),
            password or (unquote(parts.password) if parts.password else None),
        )

    def as_user(self, username: str, password: str) -> Endpoint:
        return replace(self, username=username, password=password)

    def tls_context(self) -> ssl.SSLContext | None:
        """Verifying TLS (the CA bundle, or the system's), or None for plain MQTT."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.ca_file)


def paho_client(
    endpoint: Endpoint,
    client_id: str,
    *,
    manual_ack: bool = False,
) -> paho.Client:
    """A paho-mqtt 2.x MQTT v5 client for ``endpoint`` (not connected)."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
        manual_ack=manual_ack,
    )
    if endpoint.username:
        client.username_pw_set(endpoint.username, endpoint.password)
    context = endpoint.tls_context()
    if context is not None:
        client.tls_set_context(context)
    return client


def aiomqtt_client(endpoint: Endpoint, client_id: str, **options: Any) -> aiomqtt.Client:
    """An aiomqtt MQTT v5 client for ``endpoint``; ``options`` go to ``aiomqtt.Client``."""
    context = endpoint.tls_context()
    return aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        username=endpoint.username,
        password=endpoint.password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=context,
        **options,
    )


def reconnect_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """The one reconnect policy: full jitter, uniform in ``[0, min(cap, base * 2**attempt))``.

    ``attempt`` counts failures since the last good connection (0 for the first retry).
    Spreading every retry over the whole window keeps a fleet (or a set of services) that
    lost its broker from coming back in the same second (AWS Architecture Blog,
    "Exponential Backoff And Jitter").
    """
    if attempt < 0 or base <= 0 or cap <= 0:
        raise ValueError("attempt must be >= 0, base and cap > 0")
    return min(cap, base * 2.0 ** min(attempt, 62)) * rand()


class LoopDriver:
    """Drives ``client`` from the running event loop until :meth:`stop`.

    ``connect`` is a callable doing the client's blocking ``connect`` (it runs in a worker
    thread); afterwards every callback of the client runs on the event loop.
    """

    def __init__(
        self,
        client: paho.Client,
        connect: Callable[[], Any],
        logger: logging.Logger,
        *,
        misc_interval: float = 1.0,
    ) -> None:
        self._client = client
        self._connect = connect
        self._log = logger
        self._misc_interval = misc_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost = asyncio.Event()
        self._stop = asyncio.Event()
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write

    async def run(self, on_connect_error: Callable[[BaseException], None] | None = None) -> None:
        """Connect, and reconnect whenever the connection is lost, until :meth:`stop`."""
        self._loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stop.is_set():
            self._lost.clear()
            try:
                await asyncio.to_thread(self._connect)
            except (OSError, ValueError) as exc:
                attempt += 1
                if on_connect_error is not None:
                    on_connect_error(exc)
                self._log.warning(
                    "mqtt connect failed", extra={"error": str(exc)[:200], "attempt": attempt}
                )
                await self._pause(reconnect_delay(attempt - 1))
                continue
            attempt = 0
            misc = asyncio.create_task(self._misc(), name="mqtt keepalive")
            try:
                await self._lost.wait()
            finally:
                misc.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await misc
            if not self._stop.is_set():
                await self._pause(reconnect_delay(0))

    async def close(self, properties: Any = None, grace: float = 5.0) -> None:
        """Send DISCONNECT, wait until the socket closed (at most ``grace`` seconds), and
        stop reconnecting."""
        self._stop.set()
        if self._client.is_connected():
            self._client.disconnect(properties=properties)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), grace)
        self._lost.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _misc(self) -> None:
        """paho's housekeeping: keepalive pings, retries, detecting a dead connection."""
        while self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:  # noqa: ASYNC110
            await asyncio.sleep(self._misc_interval)  # a timer, not a wait for an event
        self._lost.set()

    # -- paho socket callbacks (the first ones from the connect thread) ------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._add_reader, sock)

    def _add_reader(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock, self._readable)

    def _readable(self) -> None:
        """Read every packet already here (up to a bound), not one per loop iteration:
        paho's ``loop_read`` takes one packet, and a burst of thousands of messages read
        one per event-loop turn arrives slowly between the other work of the loop."""
        try:
            for _ in range(READ_BURST):
                if self._client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._lost.set()
                    return
                if not _more_to_read(self._client.socket()):
                    return
        except OSError:
            self._lost.set()

    def _socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._forget, sock)

    def _forget(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._lost.set()

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.add_writer(sock, self._writable)

    def _writable(self) -> None:
        try:
            if self._client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost.set()
        except OSError:
            self._lost.set()

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._remove_writer, sock)

    def _remove_writer(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(sock)
