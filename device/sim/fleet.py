"""Thousands of simulated devices in one asyncio process (aiomqtt), as a library.

Each :class:`SimDevice` follows the reference agent's rules from :mod:`device.behaviour`
(session counter per connection, ordering keys, retained presence with a Last Will,
config decisions, the upgrade job state machine with size/sha256 checks and a reboot);
only the transport differs. :class:`Fleet` owns the devices and their tasks::

    async with Fleet(FleetOptions(devices=1000, prefix="sim"), broker, logger) as fleet:
        await fleet.wait_ready()                   # all connected, presence + state sent
        await fleet.publish_state_all()
        fleet.last_state("sim-000000")             # the StateMessage it sent last
        await fleet.drop_all_abruptly()           # sockets closed, no DISCONNECT: wills fire
        await fleet.reconnect(fleet.ids[:10])

An abrupt drop shuts the TCP socket down under paho without sending DISCONNECT, so the
broker publishes the Last Will, exactly as when a device loses power.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel

from device import behaviour as b
from device import commands as dc
from device.diagnostics import put_object
from device.errors import DiagnosticsError, DownloadError
from device.settings import SimSettings
from outpost.mqtt import Endpoint, aiomqtt_client
from schemas import commands as cmd
from schemas.protocol import (
    CommandRequest,
    CommandStatus,
    ConfigReport,
    JobState,
    StateMessage,
    encode,
    utc_now,
)
from schemas.topics import (
    Channel,
    TopicError,
    device_subscriptions,
    is_device_id,
    numbered_device_id,
    parse,
    topic,
)

__all__ = ["Broker", "Fleet", "FleetOptions", "FleetStats", "SimDevice", "load_accounts"]

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Broker:
    """Where the simulated devices connect, and as whom.

    A device listed in ``accounts`` (device id → the password its registration returned)
    connects with its own account, as a real device does, and the broker's per-device ACL
    applies to it. Any other device uses the shared ``username``/``password`` (a load
    generator's account in benchmarks).
    """

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    accounts: Mapping[str, str] = field(default_factory=dict, hash=False)

    def login(self, device_id: str) -> tuple[str | None, str | None]:
        """The username and password ``device_id`` connects with."""
        if device_id in self.accounts:
            return device_id, self.accounts[device_id]
        return self.username, self.password

    @classmethod
    def from_settings(cls, settings: SimSettings) -> Broker:
        url = Endpoint.from_url(settings.broker_url, ca_file=settings.ca_file)
        password = settings.password.get_secret_value() if settings.password else None
        accounts = load_accounts(settings.accounts_file) if settings.accounts_file else {}
        return cls(
            url.host,
            url.port,
            settings.username or url.username,
            password or url.password,
            url.tls,
            settings.ca_file,
            accounts,
        )

    def endpoint(self, device_id: str) -> Endpoint:
        """The broker as ``device_id`` reaches it: its own account when it has one."""
        username, password = self.login(device_id)
        return Endpoint(self.host, self.port, self.tls, self.ca_file, username, password)


def load_accounts(path: Path) -> dict[str, str]:
    """Device accounts from a JSON object ``{"device id": "password", ...}``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read device accounts from {path}: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a JSON object of device id -> password")
    return data


@dataclass
class FleetOptions:
    devices: int = 100
    prefix: str = "sim"
    firmware: str = "1.0.0"
    hardware_model: str = "sim-ap"
    firmware_key: str | None = None  # verify signed manifests with it (None: trust any job)
    state_interval: float = 0.0  # seconds between periodic states; 0 = only on changes
    connect_concurrency: int = 64  # CONNECTs in flight at once (ramp)
    keepalive: int = 60
    session_expiry: int = 3600
    fail_rate: float = 0.0  # share of upgrade jobs that fail at install
    download_rate: float | None = None  # bytes/s per device; None = as fast as possible
    download_concurrency: int = 8
    churn_per_min: float = 0.0  # share of online devices dropped per minute
    abrupt_share: float = 0.5  # of churned devices, the share dropped without DISCONNECT
    reconnect_base: float = 1.0  # backoff after a drop (full jitter), seconds
    reconnect_cap: float = 30.0
    seed: int | None = None
    ids: Sequence[str] | None = None  # the devices' ids (provisioned); None: numbered
    log_bytes: int = 64 * 1024  # size of the log a ``logs`` command uploads
    # The session before each device's first connection. None: the clock in milliseconds
    # at start, as a device without storage does (docs/protocol.md), so a restarted
    # simulator's messages are newer than the last run's (its Last Wills included):
    # from 0, a second ``outpost dev up`` had every demo device's "online" skipped as
    # older than the "offline" its first run left.
    first_session: int | None = None

    def device_id(self, index: int) -> str:
        if self.ids is not None:
            return self.ids[index]
        return numbered_device_id(self.prefix, index)

    @property
    def count(self) -> int:
        return len(self.ids) if self.ids is not None else self.devices


@dataclass
class FleetStats:
    started_at: float = field(default_factory=time.monotonic)
    connected: int = 0  # sessions with a CONNACK
    ready: int = 0  # of those, the ones that sent presence and state and subscribed
    connects: int = 0
    connect_failures: int = 0
    sent: int = 0
    send_failures: int = 0
    received: int = 0
    abrupt_drops: int = 0
    graceful_drops: int = 0
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    commands_answered: int = 0
    configs_applied: int = 0
    all_connected_after: float | None = None  # seconds from start until every device was up


class DropMode(StrEnum):
    ABRUPT = "abrupt"
    GRACEFUL = "graceful"
    REBOOT = "reboot"


class SimDevice:
    """One simulated device: the agent's behaviour on an aiomqtt client."""

    def __init__(self, fleet: Fleet, device_id: str) -> None:
        self.fleet = fleet
        self.device_id = device_id
        self.seq = b.Sequencer(fleet.session_base)
        self.firmware = fleet.options.firmware
        self.config: ConfigReport | None = None
        self.job: b.JobRecord | None = None
        self.last_state: StateMessage | None = None
        self.counters: dict[str, int | float] = {}  # sent with every state from now on
        self.jobs_received: list[tuple[str, int]] = []  # (job_id, execution) per job message
        self.client: aiomqtt.Client | None = None
        self.want_online = asyncio.Event()
        self._drop: asyncio.Future[DropMode] | None = None
        self._connecting = False
        self._pending_drop: DropMode | None = None
        self._boot_pending = True
        self._booted_at = time.monotonic()
        self._job_task: asyncio.Task[None] | None = None
        self.handled = dc.Handled()
        self.commands: list[str] = []  # every command id delivered, in arrival order

    @property
    def connected(self) -> bool:
        return self.client is not None

    # ------------------------------------------------------------------ lifetime

    async def live(self) -> None:
        """The device's whole life: connect when wanted, reconnect with backoff."""
        attempt = 0
        while True:
            await self.want_online.wait()
            try:
                mode = await self._session()
            except aiomqtt.MqttError as exc:
                self.fleet.log.debug(
                    "session ended", extra={"device_id": self.device_id, "error": str(exc)}
                )
                mode = None
            if mode is None:  # lost the broker: exponential backoff, full jitter
                delay, attempt = self.fleet.backoff(attempt), attempt + 1
            else:  # our own drop: a reboot comes straight back, churn after some jitter
                delay = 0.0 if mode is DropMode.REBOOT else self.fleet.backoff(0)
                attempt = 0
            await asyncio.sleep(delay)

    def _client(self) -> aiomqtt.Client:
        will = b.offline_presence(self.device_id, self.seq.session, "connection_lost")
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.fleet.options.session_expiry
        return aiomqtt_client(
            self.fleet.broker.endpoint(self.device_id),
            self.device_id,
            clean_start=False,
            properties=props,
            keepalive=self.fleet.options.keepalive,
            will=aiomqtt.Will(
                topic(Channel.PRESENCE, self.device_id), encode(will), qos=1, retain=True
            ),
            logger=self.fleet.mqtt_log,
            timeout=30,
        )

    async def _session(self) -> DropMode:
        self.seq.new_session()
        client = self._client()
        self._connecting, self._pending_drop = True, None
        try:
            async with self.fleet.ramp:
                await client.__aenter__()
        except aiomqtt.MqttError:
            self.fleet.stats.connect_failures += 1
            raise
        finally:
            self._connecting = False
        drop = self._drop = asyncio.get_running_loop().create_future()
        if self._pending_drop is not None:  # dropped while the CONNECT was in flight
            drop.set_result(self._pending_drop)
        self.client = client
        self.fleet.on_connected(self)
        ready = False
        try:
            await self._online(client)
            ready = True
            self.fleet.on_ready(+1)
            mode = await self._serve(client, drop)
            await self._leave(client, mode)
        except aiomqtt.MqttError:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
            raise
        finally:
            self.client = None
            self.fleet.stats.connected -= 1
            if ready:
                self.fleet.on_ready(-1)
            self.fleet.changed()
        return mode

    async def _online(self, client: aiomqtt.Client) -> None:
        presence = b.online_presence(self.device_id, self.seq.next_key(), utc_now())
        await self._send(Channel.PRESENCE, presence, retain=True)
        await client.subscribe([(f, 1) for f in device_subscriptions(self.device_id)])
        await self.publish_state()
        if self._boot_pending:
            self._boot_pending = False
            await self._resume_job()

    async def _serve(self, client: aiomqtt.Client, drop: asyncio.Future[DropMode]) -> DropMode:
        tasks: list[asyncio.Future[Any]] = [
            asyncio.create_task(self._read(client), name=f"{self.device_id}-read"),
            asyncio.create_task(self._tick(), name=f"{self.device_id}-tick"),
        ]
        try:
            done, _ = await asyncio.wait([drop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_all(tasks)
        if drop in done:
            return drop.result()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise aiomqtt.MqttError(str(task.exception()))
        raise aiomqtt.MqttError("connection lost")

    async def _leave(self, client: aiomqtt.Client, mode: DropMode) -> None:
        if mode is DropMode.ABRUPT:
            self.fleet.stats.abrupt_drops += 1
            await _close_abruptly(client)
            return
        self.fleet.stats.graceful_drops += 1
        offline = b.offline_presence(
            self.device_id,
            self.seq.session,
            "reboot" if mode is DropMode.REBOOT else "shutdown",
            utc_now(),
        )
        try:
            await client.publish(
                topic(Channel.PRESENCE, self.device_id), encode(offline), qos=1, retain=True
            )
            self.fleet.stats.sent += 1
        finally:
            await client.__aexit__(None, None, None)

    def drop(self, mode: DropMode) -> bool:
        """Ask the current session to end; False if the device is not connected."""
        if self._connecting:
            self._pending_drop = mode
            return True
        if self._drop is None or self._drop.done() or self.client is None:
            return False
        self._drop.set_result(mode)
        return True

    # ------------------------------------------------------------------ messages

    async def _send(
        self,
        channel: Channel,
        message: BaseModel,
        *,
        retain: bool = False,
        job_id: str | None = None,
        properties: Properties | None = None,
    ) -> bool:
        client = self.client
        if client is None:
            return False
        try:
            await client.publish(
                topic(channel, self.device_id, job_id),
                encode(message),
                qos=1,
                retain=retain,
                properties=properties,
            )
        except aiomqtt.MqttError:
            self.fleet.stats.send_failures += 1
            return False
        self.fleet.stats.sent += 1
        return True

    async def publish_state(self) -> bool:
        state = b.state_message(
            self.device_id,
            self.seq.next_key(),
            utc_now(),
            firmware=self.firmware,
            hardware_model=self.fleet.options.hardware_model,
            config=self.config,
            uptime_s=int(time.monotonic() - self._booted_at),
            counters=self.counters,
        )
        sent = await self._send(Channel.STATE, state)
        if sent:
            self.last_state = state
        return sent

    async def _tick(self) -> None:
        interval = self.fleet.options.state_interval
        if interval <= 0:
            await asyncio.Event().wait()  # no periodic state: idle until cancelled
        await asyncio.sleep(interval * self.fleet.rng.random())  # spread the fleet
        while True:
            await self.publish_state()
            await asyncio.sleep(interval)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.fleet.stats.received += 1
            payload = message.payload if isinstance(message.payload, bytes) else b""
            correlation = getattr(message.properties, "CorrelationData", None)
            await self._handle(str(message.topic), payload, correlation)

    async def _handle(
        self, raw_topic: str, payload: bytes, correlation: bytes | None = None
    ) -> None:
        try:
            where = parse(raw_topic)
        except TopicError:
            return
        if where.channel is Channel.CONFIG and payload:
            await self._handle_config(payload)
        elif where.channel is Channel.JOB and where.job_id is not None:
            await self._handle_job(where.job_id, payload)
        elif where.channel is Channel.COMMAND and where.job_id is not None:
            await self._handle_command(raw_topic, where.job_id, payload, correlation)

    # ------------------------------------------------------------------ commands

    async def _handle_command(
        self, raw_topic: str, command_id: str, payload: bytes, correlation: bytes | None
    ) -> None:
        """Decide at once (in arrival order), run in a task of its own: a log upload
        does not hold up the next message."""
        self.commands.append(command_id)
        self.fleet.on_command(self.device_id, command_id)
        request = dc.parse(raw_topic, payload)
        if isinstance(request, str):
            if command_id not in self.handled:
                self.handled.add(command_id)
                await self._answer(command_id, correlation, CommandStatus.REJECTED, error=request)
            return
        decision = dc.decide(request, utc_now(), self.handled)
        if decision.action in (dc.Action.IGNORE, dc.Action.EXPIRED):
            return
        self.handled.add(command_id)
        if decision.action is dc.Action.ANSWER:
            assert decision.status is not None
            await self._answer(command_id, correlation, decision.status, error=decision.error)
            return
        self.fleet.spawn(
            self._run_command(request, decision.args, correlation), f"{self.device_id}-command"
        )

    async def _run_command(
        self, request: CommandRequest, args: BaseModel | None, correlation: bytes | None
    ) -> None:
        rng, cid = self.fleet.rng, request.command_id
        output: BaseModel
        if isinstance(args, cmd.PingArgs):
            output = dc.simulated_ping(args, rng)
        elif isinstance(args, cmd.ScanArgs):
            output = dc.simulated_scan(args, rng)
        elif isinstance(args, cmd.CountersArgs):
            output = dc.simulated_counters(args, rng)
        elif isinstance(args, cmd.LogsArgs):
            body = dc.simulated_log(
                self.device_id, min(args.max_bytes, self.fleet.options.log_bytes)
            )
            try:
                output = await self.fleet.upload(args.checked_url(), body, args.key or "")
            except DiagnosticsError as exc:
                await self._answer(cid, correlation, CommandStatus.FAILED, error=str(exc))
                return
        else:  # reboot: answer first, then drop the session (offline, reason reboot)
            await self._answer(cid, correlation, CommandStatus.SUCCEEDED, cmd.RebootOutput())
            self._boot_pending = True
            self._booted_at = time.monotonic()
            self.drop(DropMode.REBOOT)
            return
        await self._answer(cid, correlation, CommandStatus.SUCCEEDED, output)

    async def _answer(
        self,
        command_id: str,
        correlation: bytes | None,
        status: CommandStatus,
        output: BaseModel | None = None,
        error: str | None = None,
    ) -> None:
        message = dc.result(
            self.device_id, self.seq.next_key(), utc_now(), command_id, status, output, error
        )
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        if await self._send(Channel.COMMAND_RESULT, message, job_id=command_id, properties=props):
            self.fleet.stats.commands_answered += 1

    async def _handle_config(self, payload: bytes) -> None:
        desired = b.parse_config(payload)
        if isinstance(desired, str):
            return
        if b.decide_config(desired, self.config) is not b.ConfigDecision.APPLY:
            return
        self.config = b.apply_config(desired, self.fleet.apply_config)
        self.fleet.stats.configs_applied += 1
        self.fleet.changed()
        await self.publish_state()

    async def _handle_job(self, job_id: str, payload: bytes) -> None:
        command = b.parse_job(payload)
        if isinstance(command, str) or command.job_id != job_id:
            return
        self.jobs_received.append((command.job_id, command.execution))
        key = self.fleet.options.firmware_key
        trust = b.FirmwareTrust(key, self.fleet.options.hardware_model) if key else None
        decision = b.faulty_decision(
            b.decide_job(command, self.job, self.firmware, utc_now(), trust),
            self.fleet.fault(self),
        )
        if decision.action is b.JobAction.IGNORE:
            return
        if decision.action is not b.JobAction.REJECT:
            self.job = decision.record
        await self._report(decision.record)
        if decision.action is b.JobAction.START:
            self._start_job(decision.record)

    # ------------------------------------------------------------------ upgrade job

    async def _report(self, record: b.JobRecord) -> None:
        message = b.job_status(
            self.device_id, self.seq.next_key(), utc_now(), record, self.firmware
        )
        await self._send(Channel.JOB_STATUS, message, job_id=record.job_id)

    async def _move(
        self,
        record: b.JobRecord,
        status: JobState,
        *,
        progress: float | None = None,
        reason: str | None = None,
    ) -> b.JobRecord:
        self.job = record.moved(status, progress=progress, reason=reason)
        await self._report(self.job)
        return self.job

    def _start_job(self, record: b.JobRecord) -> None:
        if self._job_task is not None and not self._job_task.done():
            return
        self._job_task = self.fleet.spawn(self._run_job(record), f"{self.device_id}-job")

    async def _resume_job(self) -> None:
        if self.job is None:
            return
        resumed = b.resume_job(self.job, self.firmware, utc_now())
        if resumed.status in (JobState.QUEUED, JobState.DOWNLOADING):
            self._start_job(resumed)
        else:
            self.job = resumed
            await self._report(resumed)

    async def _run_job(self, record: b.JobRecord) -> None:
        fault = self.fleet.fault(self)
        check = b.ImageCheck(record.size, record.sha256)
        record = await self._move(record, JobState.DOWNLOADING, progress=0.0)
        throttle = b.ProgressThrottle(step=25.0)
        try:
            if fault is b.Fault.FAIL_DOWNLOAD:
                raise DownloadError("download interrupted (injected fault)")
            async for _ in self.fleet.download(record.url, check):
                if throttle.due(check.progress) and check.progress < 100.0:
                    record = await self._move(record, JobState.DOWNLOADING, progress=check.progress)
            failure = check.failure()
        except (DownloadError, ValueError) as exc:
            failure = str(exc)
        if failure is None and self.fleet.rng.random() < self.fleet.options.fail_rate:
            failure = "simulated install failure"
        if failure is not None:
            self.fleet.stats.jobs_failed += 1
            await self._move(record, JobState.FAILED, progress=check.progress, reason=failure)
            return
        await self._move(record, JobState.INSTALLING, progress=100.0)
        if fault is not b.Fault.OLD_IMAGE:
            self.firmware = record.target
        if fault is not None and fault.early_success:  # its record says done: no resume
            await self._move(record, JobState.SUCCEEDED, progress=100.0)
        else:
            await self._move(record, JobState.REBOOTING, progress=100.0)
        self.fleet.stats.jobs_succeeded += 1
        self._boot_pending = True
        self._booted_at = time.monotonic()
        if fault is b.Fault.NO_RETURN:  # dies in its reboot: the Last Will says offline
            self.want_online.clear()
            self.drop(DropMode.ABRUPT)
        else:
            self.drop(DropMode.REBOOT)


async def _cancel_all(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again while any is left.

    Once is not always enough on Python 3.11: ``asyncio.wait_for`` (inside aiomqtt's
    publish) swallows a cancellation that arrives as its future completes (fixed in
    3.12, gh-86296), and the reader then waits for its next message forever. Seen here:
    a fleet whose devices had just acknowledged a config hung at exit.
    """
    pending = [t for t in tasks if not t.done()]
    while pending:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)
        pending = [t for t in pending if not t.done()]
    for task in tasks:  # retrieve outcomes: no "exception was never retrieved"
        if not task.cancelled():
            task.exception()


async def _close_abruptly(client: aiomqtt.Client) -> None:
    """Shut the TCP connection without DISCONNECT: the broker must publish the will."""
    paho_client = client._client
    sock = paho_client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
    disconnected = client._disconnected
    with contextlib.suppress(aiomqtt.MqttError, TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(disconnected), timeout=5)
    if disconnected.done() and not disconnected.cancelled():
        disconnected.exception()  # retrieved: no "exception never retrieved" warning
    with contextlib.suppress(aiomqtt.MqttError):
        await client.__aexit__(None, None, None)


class Fleet:
    """An async context manager owning N simulated devices and every task they run."""

    def __init__(
        self,
        options: FleetOptions,
        broker: Broker,
        logger: logging.Logger,
        *,
        apply_config: b.ApplyConfig = lambda _message: None,
        start_online: bool = True,
        faults: Mapping[str, b.Fault] | None = None,
    ) -> None:
        self.options = options
        self.broker = broker
        self.log = logger
        self.mqtt_log = logger.getChild("mqtt")
        self.mqtt_log.setLevel(logging.CRITICAL)  # paho chatter of thousands of clients
        self.apply_config = apply_config
        self.faults = dict(faults or {})
        self.rng = random.Random(options.seed)
        self.stats = FleetStats()
        self.session_base = (
            options.first_session if options.first_session is not None else int(time.time() * 1000)
        )
        if options.count and not is_device_id(options.device_id(0)):
            raise ValueError(
                f"prefix {options.prefix!r} does not make valid device ids "
                f"(e.g. {options.device_id(0)!r})"
            )
        self.devices = {
            options.device_id(i): SimDevice(self, options.device_id(i))
            for i in range(options.count)
        }
        self.ids = list(self.devices)
        self._start_online = start_online
        self._tasks: set[asyncio.Task[Any]] = set()
        self._downloads: ThreadPoolExecutor | None = None
        self._download_slots = asyncio.Semaphore(options.download_concurrency)
        self.ramp = asyncio.Semaphore(options.connect_concurrency)
        self._changed = asyncio.Event()
        self.arrivals: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Fleet:
        self._downloads = ThreadPoolExecutor(
            self.options.download_concurrency, thread_name_prefix="sim-download"
        )
        self.stats = FleetStats()
        for device in self.devices.values():
            self.spawn(device.live(), f"{device.device_id}-live")
            if self._start_online:
                device.want_online.set()
        if self.options.churn_per_min > 0:
            self.spawn(self._churn(), "fleet-churn")
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await self.disconnect(self.ids)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._downloads is not None:
            self._downloads.shutdown(wait=False, cancel_futures=True)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error(
                "simulator task failed", exc_info=task.exception(), extra={"task": task.get_name()}
            )

    def on_connected(self, device: SimDevice) -> None:
        self.changed()
        self.stats.connected += 1
        self.stats.connects += 1
        if self.stats.all_connected_after is None and self.stats.connected == len(self.ids):
            self.stats.all_connected_after = time.monotonic() - self.stats.started_at

    def on_command(self, device_id: str, command_id: str) -> None:
        """A command request reached ``device_id`` (``arrivals``: id -> monotonic time)."""
        self.arrivals.setdefault(command_id, time.monotonic())

    def on_ready(self, delta: int) -> None:
        self.stats.ready += delta
        self.changed()

    def backoff(self, attempt: int) -> float:
        return b.backoff_delay(
            attempt,
            base=self.options.reconnect_base,
            cap=self.options.reconnect_cap,
            rand=self.rng.random,
        )

    # ------------------------------------------------------------------ queries

    def fault(self, device: SimDevice) -> b.Fault | None:
        """The failure injected into ``device``'s upgrades, if any."""
        return self.faults.get(device.device_id)

    def device(self, device_id: str) -> SimDevice:
        return self.devices[device_id]

    def last_state(self, device_id: str) -> StateMessage | None:
        return self.devices[device_id].last_state

    def connected_ids(self) -> list[str]:
        return [i for i, d in self.devices.items() if d.connected]

    def changed(self) -> None:
        """Wake everyone waiting for a connection count (a device came or went)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    async def wait_connected(self, count: int | None = None) -> None:
        """Until ``count`` devices (default: all) are connected. Wrap in asyncio.timeout."""
        target = len(self.ids) if count is None else count
        await self._until(lambda: self.stats.connected >= target)

    async def wait_ready(self, count: int | None = None) -> None:
        """Until ``count`` devices (default: all) have connected, announced their presence,
        sent a state and subscribed. Wrap in asyncio.timeout."""
        target = len(self.ids) if count is None else count
        await self._until(lambda: self.stats.ready >= target)

    async def wait_configured(self) -> None:
        """Until every device has applied a config. Wrap in asyncio.timeout."""
        await self._until(lambda: all(d.config is not None for d in self.devices.values()))

    async def wait_disconnected(self, ids: Iterable[str]) -> None:
        wanted = list(ids)
        await self._until(lambda: not any(self.devices[i].connected for i in wanted))

    # ------------------------------------------------------------------ actions

    async def publish_state_all(
        self,
        ids: Sequence[str] | None = None,
        concurrency: int = 256,
        counters: Mapping[str, int | float] | None = None,
    ) -> int:
        """Every (connected) device sends one state now; returns how many were sent.

        ``counters`` are merged into each device's counters first (and sent with its
        later states too): a state whose content changed is one the bridge must write.
        """
        slots = asyncio.Semaphore(concurrency)

        async def one(device: SimDevice) -> bool:
            async with slots:
                device.counters.update(counters or {})
                return await device.publish_state()

        chosen = [self.devices[i] for i in (ids if ids is not None else self.ids)]
        results = await asyncio.gather(*(one(d) for d in chosen))
        return sum(results)

    async def drop(self, ids: Iterable[str], *, abrupt: bool = True) -> int:
        """End the sessions of ``ids`` and wait until they are closed.

        The devices stay offline until :meth:`reconnect`. Returns how many were online.
        """
        mode = DropMode.ABRUPT if abrupt else DropMode.GRACEFUL
        chosen = list(ids)
        dropped = 0
        for device_id in chosen:
            device = self.devices[device_id]
            device.want_online.clear()
            dropped += device.drop(mode)
        await self.wait_disconnected(chosen)
        return dropped

    async def drop_all_abruptly(self) -> int:
        return await self.drop(self.connected_ids(), abrupt=True)

    async def disconnect(self, ids: Iterable[str]) -> int:
        return await self.drop(ids, abrupt=False)

    async def reconnect(self, ids: Iterable[str]) -> None:
        for device_id in ids:
            self.devices[device_id].want_online.set()

    async def _churn(self) -> None:
        """Drop a share of the online devices every second; they come back after backoff."""
        per_second = self.options.churn_per_min / 60.0
        while True:
            await asyncio.sleep(1.0)
            online = self.connected_ids()
            expected = len(online) * per_second
            count = int(expected) + (self.rng.random() < expected - int(expected))
            for device_id in self.rng.sample(online, min(count, len(online))):
                abrupt = self.rng.random() < self.options.abrupt_share
                self.devices[device_id].drop(DropMode.ABRUPT if abrupt else DropMode.GRACEFUL)

    # ------------------------------------------------------------------ downloads

    async def download(self, url: str, check: b.ImageCheck) -> AsyncIterator[int]:
        """Stream ``url`` into ``check`` chunk by chunk (an async generator of chunk sizes)."""
        loop = asyncio.get_running_loop()
        rate = self.options.download_rate
        async with self._download_slots:
            body = await loop.run_in_executor(self._downloads, _open_url, url)
            try:
                while chunk := await loop.run_in_executor(self._downloads, _read, body):
                    check.update(chunk)
                    yield len(chunk)
                    if rate:
                        await asyncio.sleep(len(chunk) / rate)
            finally:
                body.close()

    async def upload(self, url: str, body: bytes, key: str) -> cmd.LogsOutput:
        """PUT ``body`` to a presigned URL (in the download threads); what was stored."""
        loop = asyncio.get_running_loop()
        async with self._download_slots:
            return await loop.run_in_executor(self._downloads, put_object, url, body, key)


def _open_url(url: str) -> BinaryIO:
    try:
        response: BinaryIO = urllib.request.urlopen(url, timeout=30)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot reach download URL: {exc}") from None
    return response


def _read(body: BinaryIO) -> bytes:
    try:
        return body.read(_CHUNK)
    except OSError as exc:
        raise DownloadError(f"download interrupted: {exc}") from None
