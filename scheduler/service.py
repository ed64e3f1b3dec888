"""``outpost scheduler``: the periodic jobs, their HTTP endpoints and a graceful stop.

Every instance runs the same APScheduler 3.11 ``AsyncIOScheduler`` jobs; exclusivity
comes from MongoDB (:mod:`scheduler.claims`), never from there being one instance:

- ``rollouts`` (every ``tick_seconds``): :meth:`RolloutExecutor.tick`, each rollout
  under its own lease, so several instances share the rollouts and one that dies is
  replaced within ``lease_seconds + tick_seconds``;
- ``commands`` (every ``command_tick_seconds``): :meth:`CommandSender.tick`, group
  device commands, each bulk under its own lease, paced at its per-minute cap
  (:mod:`scheduler.commands`);
- ``broker_snapshot`` (every ``snapshot_seconds``): each firing is claimed by one
  instance (``broker_snapshot@<slot>``), which stores the remembered ``$SYS`` values;
- ``notify`` (every ``notify_seconds``, when ``OUTPOST_SMTP_HOST`` is set): each firing
  claimed by one instance, which mails offline incidents, recoveries and ended
  rollouts (:mod:`scheduler.notify`);
- ``fleet_metrics`` (every ``fleet_seconds``): each firing claimed by one instance,
  which reads the database once and stores the fleet gauges; every instance exports
  the latest (:mod:`scheduler.fleet_metrics`);
- ``reconcile`` (every ``reconcile_seconds``): each firing claimed by one instance,
  which re-publishes lagging retained configs (:mod:`scheduler.reconcile`). When
  ``$SYS/broker/uptime`` shows a broker start not seen before, the first instance to
  claim ``config_resync@<broker start>`` re-publishes every desired config, since a
  broker killed without saving lost its retained messages.

One MQTT connection (reconnected with backoff) publishes commands and keeps the single
long-lived ``$SYS/#`` subscription. SIGTERM: stop firing jobs, let the running tick end
(a tick starts batches for one rollout for at most half a usable lease period,
:mod:`scheduler.budget`), hand the leases over at once (another instance takes them on
its next tick), close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiomqtt
import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import PyMongoError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from outpost import store
from outpost.health import ReadinessChecks, flag_check, ping_check
from outpost.mqtt import aiomqtt_client, reconnect_delay
from outpost.settings import HttpSettings, MongoSettings, MqttSettings, S3Settings
from scheduler import fleet_metrics
from scheduler.broker_metrics import UPTIME, BrokerMetrics, broker_started
from scheduler.claims import Claims
from scheduler.clock import Clock, utc_now
from scheduler.commands import CommandSender
from scheduler.config import SchedulerSettings
from scheduler.errors import SchedulerError
from scheduler.executor import RolloutExecutor
from scheduler.metrics import SchedulerMetrics
from scheduler.notify import Notifier, SmtpMailer, SmtpSettings
from scheduler.publisher import MqttSink, Presigner, s3_client
from scheduler.reconcile import Reconciler
from scheduler.store import RolloutStore
from schemas.documents import BROKER_METRICS

__all__ = ["SchedulerService", "Settings"]


@dataclass(frozen=True)
class Settings:
    mqtt: MqttSettings
    mongo: MongoSettings
    s3: S3Settings
    http: HttpSettings
    scheduler: SchedulerSettings
    smtp: SmtpSettings = field(default_factory=SmtpSettings)


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the service owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def firing_slot(now: datetime, period_s: float) -> datetime:
    """The scheduled time a periodic firing belongs to (same for every instance)."""
    epoch = now.timestamp()
    return datetime.fromtimestamp(math.floor(epoch / period_s) * period_s, UTC)


class SchedulerService:
    def __init__(self, settings: Settings, logger: logging.Logger, clock: Clock = utc_now) -> None:
        self.settings = settings
        self.log = logger
        self.clock = clock
        self.metrics = SchedulerMetrics()
        self.broker = BrokerMetrics(self.metrics.registry)
        self.fleet_gauges = fleet_metrics.FleetGauges(self.metrics.registry)
        self.sink = MqttSink()
        self._tick_lock = asyncio.Lock()
        self._command_lock = asyncio.Lock()
        self._command_indexes = False
        self._mongo_ok = False
        self._broker_start: datetime | None = None
        self._resync: datetime | None = None
        self._resync_claimed = False

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.settings.scheduler
        async with AsyncExitStack() as stack:
            client = store.client(self.settings.mongo)
            stack.push_async_callback(client.close)
            self.db = store.Store(
                client[self.settings.mongo.database],
                concurrency=self.settings.mongo.write_concurrency,
            )
            self.claims = Claims(self.db, cfg.instance, self.clock, self.log)
            self.executor = RolloutExecutor(
                RolloutStore(self.db),
                self.claims,
                self.sink,
                Presigner(s3_client(self.settings.s3), self.settings.s3.bucket),
                self.metrics,
                self.clock,
                self.log,
                cfg.executor(self.settings.s3.presign_seconds),
            )
            self.commands = CommandSender(
                self.db,
                self.claims,
                self.sink,
                Presigner(s3_client(self.settings.s3), self.settings.s3.bucket),
                self.metrics,
                self.clock,
                self.log,
                cfg.commands(),
            )
            self.reconciler = Reconciler(self.db, self.sink, self.log, cfg.reconcile())
            self.notifier = Notifier(self.db, SmtpMailer(self.settings.smtp), self.log)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._mqtt(stop), name="scheduler mqtt")
                group.create_task(self._http(stop), name="scheduler http")
                await self._schedule(stop)
        self.log.info("scheduler stopped", extra={"instance": cfg.instance})

    # -- periodic jobs -------------------------------------------------------------------

    async def _schedule(self, stop: asyncio.Event) -> None:
        cfg = self.settings.scheduler
        scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        # (job, id, interval, run at once): each runs one at a time, missed runs coalesced
        jobs = [
            (self.tick, "rollouts", cfg.tick_seconds, True),
            (self.send_commands, "commands", cfg.command_tick_seconds, True),
            (self.snapshot, "broker_snapshot", cfg.snapshot_seconds, False),
            (self.reconcile, "reconcile", cfg.reconcile_seconds, False),
            (self.fleet, "fleet_metrics", cfg.fleet_seconds, True),
        ]
        if self.settings.smtp.host:
            jobs.append((self.notify, "notify", cfg.notify_seconds, False))
        for job, job_id, seconds, at_once in jobs:
            extra = {"next_run_time": now} if at_once else {}
            scheduler.add_job(
                job, "interval", seconds=seconds, id=job_id, max_instances=1, coalesce=True, **extra
            )
        scheduler.start()
        self.log.info("scheduler started", extra={"instance": cfg.instance})
        try:
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)
            async with self._tick_lock:  # the running tick ends first
                await self._release()

    async def _release(self) -> None:
        try:
            await self.executor.release_all()
            async with self._command_lock:
                await self.commands.release_all()
        except (SchedulerError, PyMongoError) as exc:
            self.log.warning("lease release failed", extra={"error": str(exc)})

    async def send_commands(self) -> None:
        async with self._command_lock:
            with self.metrics.tick.labels("commands").time():
                try:
                    if not self._command_indexes:
                        await self.commands.ensure_indexes()
                        self._command_indexes = True
                    await self.commands.tick()
                except SchedulerError as exc:
                    self.metrics.errors.labels(type(exc).__name__).inc()
                    self.log.error("command tick failed", extra={"error": str(exc)})

    async def tick(self) -> None:
        async with self._tick_lock:
            with self.metrics.tick.labels("rollouts").time():
                try:
                    await self.executor.tick()
                    self._mongo_ok = True
                except SchedulerError as exc:
                    self.metrics.errors.labels(type(exc).__name__).inc()
                    self.log.error("rollout tick failed", extra={"error": str(exc)})

    async def snapshot(self) -> None:
        period = self.settings.scheduler.snapshot_seconds
        slot = firing_slot(self.clock(), period)
        try:
            won = await self.claims.claim_firing("broker_snapshot", slot)
            self.metrics.claims.labels("broker_snapshot", "won" if won else "lost").inc()
            if won and self.broker.last:
                await self.db[BROKER_METRICS].insert_one(self.broker.snapshot(slot))
        except (SchedulerError, PyMongoError) as exc:
            self.metrics.errors.labels("snapshot").inc()
            self.log.error("broker snapshot failed", extra={"error": str(exc)})

    async def reconcile(self) -> None:
        now = self.clock()
        slot = firing_slot(now, self.settings.scheduler.reconcile_seconds)
        try:
            await self._resync_once(now)
            won = await self.claims.claim_firing("reconcile", slot)
            self.metrics.claims.labels("reconcile", "won" if won else "lost").inc()
            if won:
                count = await self.reconciler.run(now)
                self.metrics.reconciled.inc(count)
        except SchedulerError as exc:
            self.metrics.errors.labels("reconcile").inc()
            self.log.error("config reconcile failed", extra={"error": str(exc)})

    async def fleet(self) -> None:
        """Fleet gauges: computed by the instance that claims the firing, exported by all."""
        cfg = self.settings.scheduler
        slot = firing_slot(self.clock(), cfg.fleet_seconds)
        try:
            won = await self.claims.claim_firing("fleet_metrics", slot)
            self.metrics.claims.labels("fleet_metrics", "won" if won else "lost").inc()
            doc = (
                await fleet_metrics.compute_and_store(self.db, slot, cfg.instance)
                if won
                else await fleet_metrics.latest(self.db)
            )
            if doc is not None:
                self.fleet_gauges.export(doc)
        except SchedulerError as exc:
            self.metrics.errors.labels("fleet_metrics").inc()
            self.log.error("fleet metrics failed", extra={"error": str(exc)})

    async def notify(self) -> None:
        now = self.clock()
        slot = firing_slot(now, self.settings.scheduler.notify_seconds)
        try:
            won = await self.claims.claim_firing("notify", slot)
            self.metrics.claims.labels("notify", "won" if won else "lost").inc()
            if won:
                self.metrics.mails.inc(await self.notifier.run(now))
        except SchedulerError as exc:
            self.metrics.errors.labels("notify").inc()
            self.log.error("notifications failed", extra={"error": str(exc)})

    async def _resync_once(self, now: datetime) -> None:
        """After a broker start: one instance re-publishes every desired config."""
        start = self._resync
        if start is None:
            return
        if not self._resync_claimed:
            self._resync_claimed = await self.claims.claim_firing("config_resync", start)
            if not self._resync_claimed:
                self._resync = None  # another instance does it
                return
        count = await self.reconciler.run(now, resync=True)  # raises: retried next run
        self._resync, self._resync_claimed = None, False
        self.metrics.reconciled.inc(count)

    def _observe(self, topic: str, payload: bytes) -> None:
        self.broker.observe(topic, payload)
        if topic != UPTIME or (uptime := self.broker.last.get(UPTIME)) is None:
            return
        now = self.clock()
        start = now - timedelta(seconds=uptime)
        known, self._broker_start = self._broker_start, start
        # uptime has a 1 s resolution and arrives with some delay: 2.5 s of tolerance
        if known is None or abs((start - known).total_seconds()) > 2.5:  # a new start
            self._resync = broker_started(now, uptime)
            self._resync_claimed = False
            self.log.info("broker start seen", extra={"started": self._resync.isoformat()})

    # -- MQTT ----------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        m = self.settings.mqtt
        quiet = logging.getLogger("outpost.scheduler.mqtt")
        quiet.setLevel(logging.ERROR)  # aiomqtt warns on every pending QoS 1 publish
        return aiomqtt_client(
            m.endpoint(),
            f"{m.client_id_prefix}-scheduler-{self.settings.scheduler.instance}",
            keepalive=m.keepalive,
            logger=quiet,
        )

    async def _mqtt(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                async with self._client() as client:
                    await client.subscribe("$SYS/#")
                    self.sink.attach(client)
                    failures = 0
                    self.log.info("mqtt connected")
                    await self._consume(client, stop)
            except aiomqtt.MqttError as exc:
                failures += 1
                self.log.warning("mqtt connection lost", extra={"error": str(exc)})
            finally:
                self.sink.attach(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), reconnect_delay(max(0, failures - 1)))

    async def _consume(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        async def messages() -> None:
            async for message in client.messages:
                if isinstance(message.payload, bytes):
                    self._observe(str(message.topic), message.payload)

        reader = asyncio.create_task(messages(), name="scheduler $SYS reader")
        stopper = asyncio.create_task(stop.wait(), name="scheduler stop")
        done, pending = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for task in done:
            task.result()  # re-raise a lost connection

    # -- HTTP ----------------------------------------------------------------------------

    def app(self) -> Starlette:
        async def healthz(_: Request) -> Response:
            return PlainTextResponse("ok")

        readiness = ReadinessChecks(
            {
                "mongo": ping_check(lambda: self.db.db.command("ping")),
                "mqtt": flag_check(lambda: self.sink.connected, "not connected to the broker"),
            },
            self.settings.http.ready_timeout_s,
            self.metrics.dependency_up,
        )

        async def readyz(_: Request) -> Response:
            """503 within ``OUTPOST_HTTP_READY_TIMEOUT_S``, naming the failing dependency."""
            result = await readiness.run()
            return JSONResponse(result.body(), status_code=result.status)

        async def metrics(_: Request) -> Response:
            await readiness.run()  # outpost_dependency_up is fresh at every scrape
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        return Starlette(
            routes=[
                Route("/healthz", healthz),
                Route("/readyz", readyz),
                Route("/metrics", metrics),
            ]
        )

    async def _http(self, stop: asyncio.Event) -> None:
        http = self.settings.http
        server = _QuietServer(
            uvicorn.Config(
                self.app(),
                host=http.host,
                port=http.port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        serving = asyncio.create_task(server.serve(), name="scheduler http serve")
        await stop.wait()
        server.should_exit = True
        await serving
