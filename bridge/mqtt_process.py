"""The MQTT transport in a child process, so reading packets never delays a database write.

    child: python -m bridge.mqtt_process <fd>         parent: ProcessSource
    MqttSource (paho on the child's event loop)
        ── messages (Inbound, up to 256 a frame) ──►  messages queue ──► Bridge
        ── connected / lost / ready / failed ───────►  on_connected, connected
        ◄── acks (after the write), close, stop ────

Why: the bridge's one thread both drives the database writes and reads the next
messages, and paho takes ~45 µs to read one. While a round of 20,000 states arrives,
that reading delays the answers of the writes in flight, and FerretDB waits for its next
update (bench/RESULTS.md: the first batch of a round ran at ~1,000/s against raw's
~1,600/s). Threads would not help: paho's reading is Python and holds the interpreter
lock. In the child it runs beside the writes; the parent pays ~5 µs a message to unpickle.

The child holds the bridge's MQTT session itself: the same client id, clean start off,
manual acknowledgements. It acknowledges a message only when the parent says so, which
the bridge does after the write that contains it, so the guarantees of
:mod:`bridge.service` hold unchanged. Frames on a Unix socket pair: a 4-byte length,
then a pickle (both ends are this module; the pair has no name, nothing else reaches it).

Life: the child ignores SIGINT and SIGTERM (the parent decides when to stop, after its
last acks) and leaves its session when the parent says stop or its end of the pair
closes (the parent stopped or was killed): a dead bridge never leaves a connected intake
behind. If the child dies, :attr:`ProcessSource.failure` says so, the end marker goes on
the queue, and the bridge stops with that error; unacknowledged messages stay in the
session for the restarted bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Self

from bridge.errors import MqttError
from bridge.inbound import Inbound
from bridge.mqtt_source import MqttSource, SessionOptions
from outpost import logs
from outpost.gc_tuning import tune_gc
from outpost.settings import MqttSettings

__all__ = ["ProcessSource", "main"]

FRAME_MESSAGES = 256  # messages per frame at most: a burst crosses in frames of ~60 KB
SPAWN_S = 10.0  # allowance for the child to start (imports) on top of the connect timeout
STOP_S = 10.0  # the child's DISCONNECT takes at most 5 s; then it is killed
_HEADER = struct.Struct("!I")

# -- frames -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Config:
    mqtt: MqttSettings
    session: SessionOptions


@dataclass(frozen=True, slots=True)
class _Ready:
    """Connected and subscribed (the end of the parent's ``__aenter__``)."""


@dataclass(frozen=True, slots=True)
class _Failed:
    why: str


@dataclass(frozen=True, slots=True)
class _Connected:
    session_present: bool
    generation: int
    lost_at: datetime | None


@dataclass(frozen=True, slots=True)
class _State:
    connected: bool


@dataclass(frozen=True, slots=True)
class _Messages:
    items: list[Inbound | None]


@dataclass(frozen=True, slots=True)
class _Ack:
    packets: list[tuple[int, int, int]]  # (mid, qos, generation), in the order received


@dataclass(frozen=True, slots=True)
class _Close:
    """Stop taking messages (:meth:`MqttSource.close_intake`)."""


@dataclass(frozen=True, slots=True)
class _Stop:
    """Leave the session and exit."""


def _send(writer: asyncio.StreamWriter, frame: object) -> None:
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    writer.writelines([_HEADER.pack(len(data)), data])


async def _receive(reader: asyncio.StreamReader) -> object | None:
    """The next frame; ``None`` once the other end closed."""
    try:
        head = await reader.readexactly(_HEADER.size)
        body = await reader.readexactly(_HEADER.unpack(head)[0])
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    frame: object = pickle.loads(body)  # written by our own end of the socket pair
    return frame


# -- the parent's side --------------------------------------------------------------------


class ProcessSource:
    """A :class:`bridge.inbound.Source` whose MQTT client runs in a child process.

    Built and used like :class:`MqttSource`: an async context manager (inside: connected
    and subscribed; after: the session left, the child gone).
    """

    def __init__(
        self, settings: MqttSettings, session: SessionOptions, *, logger: logging.Logger
    ) -> None:
        self._config = _Config(settings, session)
        self.client_id = session.client_id
        self._log = logger
        self.messages: asyncio.Queue[Inbound | None] = asyncio.Queue()
        self.on_connected: Callable[[bool, int, datetime | None], None] | None = None
        self.connected = False
        self.generation = 0
        self.failure: MqttError | None = None
        """Why the intake ended on its own (the child died or could not connect)."""
        self._intake_open = True
        self._stopping = False
        self._ready = asyncio.Event()
        self._acks: list[tuple[int, int, int]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        try:
            await self._start()
            async with asyncio.timeout(self._config.session.connect_timeout + SPAWN_S):
                await self._ready.wait()
        except TimeoutError:
            await self._shutdown()
            raise MqttError(f"the MQTT intake process did not connect to {self._url}") from None
        except BaseException:
            await self._shutdown()
            raise
        if self.failure is not None:
            await self._shutdown()
            raise self.failure
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (for its CPU and memory metrics)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    @property
    def _url(self) -> str:
        return self._config.mqtt.url

    async def _start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        _send(self._writer, self._config)
        self._reading = asyncio.create_task(self._read(reader), name="bridge intake reader")

    async def _shutdown(self) -> None:
        """Send the last acks and stop; the child leaves the session and exits."""
        self._stopping = True
        self._flush_acks()
        writer, process = self._writer, self._process
        self._writer = None
        if writer is not None:
            with contextlib.suppress(ConnectionError):
                _send(writer, _Stop())
                await writer.drain()
        if process is not None:
            try:
                await asyncio.wait_for(process.wait(), STOP_S)
            except TimeoutError:
                self._log.warning("mqtt intake process did not stop; killing it")
                process.kill()
                await process.wait()
        if writer is not None:
            writer.close()
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading

    # -- used by the bridge (bridge.inbound.Source) ---------------------------------------

    def ack(self, inbound: Inbound) -> bool:
        """Acknowledge one message (sent to the child with the others of this turn of the
        loop); False if it came on an earlier connection (see Inbound)."""
        if inbound.qos == 0 or inbound.generation != self.generation or self._writer is None:
            return False
        if not self._acks:
            asyncio.get_running_loop().call_soon(self._flush_acks)
        self._acks.append((inbound.mid, inbound.qos, inbound.generation))
        return True

    def close_intake(self) -> None:
        """Stop taking messages (those in transit are dropped: the broker keeps them in
        our session) and put the end marker on the queue."""
        self._end()
        if self._writer is not None:
            with contextlib.suppress(ConnectionError):
                _send(self._writer, _Close())

    def _flush_acks(self) -> None:
        acks, self._acks = self._acks, []
        if acks and self._writer is not None:
            with contextlib.suppress(ConnectionError):
                _send(self._writer, _Ack(acks))

    def _end(self) -> None:
        if self._intake_open:
            self._intake_open = False
            self.messages.put_nowait(None)

    # -- the child's frames -----------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Take the child's frames until it leaves; if it leaves on its own, or a frame
        cannot be handled, fail the source (the bridge stops with the error) rather than
        let the bridge wait for messages that will never come."""
        try:
            while (frame := await _receive(reader)) is not None:
                self._on_frame(frame)
        except Exception as exc:  # noqa: BLE001 - any failure here stops the bridge
            self._log.exception("mqtt intake frame failed")
            self._fail(MqttError(f"the MQTT intake failed: {exc!r}"))
            return
        self.connected = False
        if self._stopping:
            return
        code = await self._process.wait() if self._process is not None else None
        self._log.error("mqtt intake process exited", extra={"returncode": code})
        self._fail(MqttError(f"the MQTT intake process exited ({code})"))

    def _fail(self, error: MqttError) -> None:
        self.connected = False
        self.failure = self.failure or error
        self._ready.set()
        self._end()

    def _on_frame(self, frame: object) -> None:
        match frame:
            case _Messages(items):
                if self._intake_open:
                    put = self.messages.put_nowait
                    for item in items:
                        if item is not None:
                            put(item)
            case _Connected(present, generation, lost_at):
                self.generation = generation
                if self.on_connected is not None:
                    self.on_connected(present, generation, lost_at)
            case _State(connected):  # the child's SUBACK sends one before _Ready
                self.connected = connected
            case _Ready():
                self._ready.set()
            case _Failed(why):
                self._fail(MqttError(why))


# -- the child's side ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """The child: ``python -m bridge.mqtt_process <fd of its end of the socket pair>``."""
    fd = int((sys.argv[1:] if argv is None else argv)[0])
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the parent stops us, after its last acks
    logs.configure()
    tune_gc()
    asyncio.run(_child(socket.socket(fileno=fd)))


async def _child(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    config = await _receive(reader)
    if isinstance(config, _Config):
        await _serve(config, reader, writer)
    writer.close()


async def _serve(
    config: _Config, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    source = MqttSource(
        config.mqtt, config.session, logger=logging.getLogger("outpost.bridge.intake")
    )
    source.on_connected = lambda *connected: _send(writer, _Connected(*connected))
    source.on_state = lambda connected: _send(writer, _State(connected))
    try:
        async with source:
            _send(writer, _Ready())
            await _run(source, reader, writer)
    except MqttError as exc:
        _send(writer, _Failed(str(exc)))
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _run(
    source: MqttSource, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Forward messages and obey commands until the parent says stop or leaves; if
    forwarding fails, leave at once (the parent sees the pair close and fails)."""
    forwarding = asyncio.create_task(_forward(source, writer), name="intake forward")
    obeying = asyncio.create_task(_obey(reader, source), name="intake commands")
    pending: set[asyncio.Task[None]] = {forwarding, obeying}
    try:
        while obeying in pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if forwarding in done and forwarding.exception() is not None:
                logging.getLogger("outpost.bridge.intake").error(
                    "forwarding to the bridge failed", exc_info=forwarding.exception()
                )
                return
    finally:
        for task in (forwarding, obeying):
            task.cancel()
        await asyncio.gather(forwarding, obeying, return_exceptions=True)


async def _forward(source: MqttSource, writer: asyncio.StreamWriter) -> None:
    """Messages to the parent as they come, up to ``FRAME_MESSAGES`` a frame."""
    queue = source.messages
    while True:
        items = [await queue.get()]
        while len(items) < FRAME_MESSAGES and not queue.empty():
            items.append(queue.get_nowait())
        _send(writer, _Messages(items))
        await writer.drain()
        if items[-1] is None:
            return


async def _obey(reader: asyncio.StreamReader, source: MqttSource) -> None:
    """Carry out the parent's commands until it says stop or its end closes."""
    while (command := await _receive(reader)) is not None:
        match command:
            case _Ack(packets):
                for mid, qos, generation in packets:
                    source.ack_packet(mid, qos, generation)
            case _Close():
                source.close_intake()
            case _Stop():
                return


if __name__ == "__main__":
    # Run as this module's import, not as __main__: the frames' classes must be the
    # parent's (bridge.mqtt_process._Ack), or neither end could unpickle the other's.
    from bridge.mqtt_process import main as _main

    _main()
