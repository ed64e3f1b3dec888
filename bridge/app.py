"""Wiring: build the clients, run the bridge (or a resync), serve health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import ProcessCollector

from bridge.config import BridgeSettings
from bridge.epochs import UPTIME_TOPIC, EpochRecorder
from bridge.errors import MqttError, StoreUnavailable
from bridge.http import health_routes, serve
from bridge.inbound import Source
from bridge.metrics import BridgeMetrics
from bridge.mongo_sink import KnownIds, MongoSink
from bridge.mqtt_process import ProcessSource
from bridge.mqtt_source import MqttSource, SessionOptions
from bridge.results_sink import ResultsSink
from bridge.resync import collect_retained, write_resync
from bridge.service import Bridge, Writer
from outpost import store
from outpost.gc_tuning import tune_gc
from outpost.health import ReadinessChecks
from outpost.settings import HttpSettings, MongoSettings, MqttSettings
from schemas.topics import Channel, subscription

__all__ = ["BRIDGE_CHANNELS", "Running", "Settings", "open_writer", "run_bridge", "run_resync"]

BRIDGE_CHANNELS = (Channel.PRESENCE, Channel.STATE, Channel.JOB_STATUS, Channel.COMMAND_RESULT)


@dataclass(frozen=True)
class Settings:
    mqtt: MqttSettings
    mongo: MongoSettings
    bridge: BridgeSettings
    http: HttpSettings


@contextlib.asynccontextmanager
async def open_writer(
    settings: Settings, metrics: BridgeMetrics, logger: logging.Logger
) -> AsyncIterator[Writer]:
    client = store.client(settings.mongo, serverSelectionTimeoutMS=2000)
    try:
        b = settings.bridge
        db = store.Store(
            client[settings.mongo.database], concurrency=settings.mongo.write_concurrency
        )
        sink = MongoSink(
            db,
            dead_letter_cap=b.dead_letter_cap,
            state_refresh=timedelta(seconds=b.state_refresh_s),
        )
        devices = KnownIds(sink.devices, unknown_ttl=b.unknown_ttl_s, known_ttl=b.known_ttl_s)
        executions = KnownIds(sink.executions, unknown_ttl=b.unknown_ttl_s, known_ttl=b.known_ttl_s)
        yield Writer(sink, devices, executions, metrics, logger, results=ResultsSink(db))
    finally:
        await client.close()


@dataclass(frozen=True)
class Running:
    """Handed to ``on_started``: the bridge (for :meth:`Bridge.stop`) and its HTTP port."""

    bridge: Bridge
    http_port: int


async def run_bridge(
    settings: Settings,
    logger: logging.Logger,
    *,
    metrics: BridgeMetrics | None = None,
    on_started: Callable[[Running], None] | None = None,
    handle_signals: bool = True,
) -> None:
    """Run until SIGTERM/SIGINT (or ``bridge.stop()``): stop reading, flush, ack, leave."""
    tune_gc()
    metrics = metrics or BridgeMetrics()
    b = settings.bridge
    session = SessionOptions(
        f"{settings.mqtt.client_id_prefix}-bridge-{b.instance}",
        tuple(subscription(c, b.share_group) for c in BRIDGE_CHANNELS),
        optional=(UPTIME_TOPIC,),
        session_expiry_s=b.session_expiry_s,
        receive_maximum=b.receive_maximum,
    )
    source_type = ProcessSource if b.intake == "process" else MqttSource
    async with open_writer(settings, metrics, logger) as writer:
        epochs = EpochRecorder(writer.sink, b.instance, logger, session_expiry_s=b.session_expiry_s)
        async with source_type(settings.mqtt, session, logger=logger) as source:
            source.on_connected = lambda present, generation, lost_at: epochs.connected(
                present, generation, lost_at or datetime.now(UTC), datetime.now(UTC)
            )
            bridge = Bridge(
                source,
                writer,
                batch_max=b.batch_max,
                flush_s=b.flush_ms / 1000,
                gather_s=b.gather_ms / 1000,
                stop_timeout_s=b.stop_timeout_s,
                on_sys=epochs.observe,
            )
            with _intake_metrics(source, metrics):
                await _serve(settings, bridge, source, epochs, logger, on_started, handle_signals)
        if isinstance(source, ProcessSource) and source.failure is not None:
            raise source.failure


@contextlib.contextmanager
def _intake_metrics(source: Source, metrics: BridgeMetrics) -> Iterator[None]:
    """The intake child's CPU, memory and open files, as ``outpost_bridge_intake_process_*``
    next to the bridge's own ``process_*`` (Linux, like those)."""
    if not isinstance(source, ProcessSource):
        yield
        return
    collector = ProcessCollector(
        namespace="outpost_bridge_intake",
        pid=lambda: source.pid or "gone",  # no such /proc entry: no samples
        registry=metrics.registry,
    )
    try:
        yield
    finally:
        metrics.registry.unregister(collector)


async def _serve(
    settings: Settings,
    bridge: Bridge,
    source: Source,
    epochs: EpochRecorder,
    logger: logging.Logger,
    on_started: Callable[[Running], None] | None,
    handle_signals: bool,
) -> None:
    """Serve health and metrics, record broker epochs, and run the bridge until it stops."""
    writer = bridge.writer
    readiness = _readiness(settings, bridge, writer, source, writer.metrics)
    server = await serve(
        settings.http.host, settings.http.port, health_routes(writer.metrics.registry, readiness)
    )
    if handle_signals:
        _on_signals(bridge.stop)
    port = int(server.sockets[0].getsockname()[1])
    logger.info("bridge started", extra={"client_id": source.client_id, "http_port": port})
    if on_started is not None:
        on_started(Running(bridge, port))
    recording = asyncio.create_task(epochs.run(), name="bridge broker epochs")
    try:
        await bridge.run()
    finally:
        recording.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recording
        server.close()
        await server.wait_closed()


def _readiness(
    settings: Settings, bridge: Bridge, writer: Writer, source: Source, metrics: BridgeMetrics
) -> ReadinessChecks:
    """mongo: a ping answers, and batches are not failing; mqtt: the session is up."""

    async def mongo() -> None:
        await writer.sink.ping()
        if not writer.store_ok:
            raise StoreUnavailable("batch writes are failing and being retried")

    async def mqtt() -> None:
        if not source.connected:
            raise MqttError("not connected to the broker")
        bridge.ready()  # keeps outpost_bridge_ready current

    return ReadinessChecks(
        {"mongo": mongo, "mqtt": mqtt}, settings.http.ready_timeout_s, metrics.dependency_up
    )


def _on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop)


async def run_resync(
    settings: Settings,
    logger: logging.Logger,
    *,
    idle_s: float = 2.0,
    max_s: float = 600.0,
    metrics: BridgeMetrics | None = None,
) -> dict[str, int]:
    """Rebuild presence from the broker's retained ``devices/+/presence`` messages.

    A plain (not shared) subscription gets every retained message; they come right after
    the SUBACK, so the resync ends once none arrived for ``idle_s`` seconds. The writes
    are the bridge's conditional updates: a resync never regresses newer presence.
    """
    metrics = metrics or BridgeMetrics()
    client_id = f"{settings.mqtt.client_id_prefix}-resync-{secrets.token_hex(4)}"
    async with (
        open_writer(settings, metrics, logger) as writer,
        MqttSource(
            settings.mqtt,
            SessionOptions(
                client_id,
                (subscription(Channel.PRESENCE),),
                clean_start=True,
                session_expiry_s=0,
                receive_maximum=65_535,
            ),
            logger=logger,
        ) as source,
    ):
        batch = await collect_retained(source, idle_s=idle_s, max_s=max_s)
        return await write_resync(batch, source, writer)
