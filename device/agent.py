"""Reference device agent: paho-mqtt 2.x, synchronous, one thread.

Small on purpose, so it can be ported to firmware: one loop that owns the socket
(``client.loop()`` runs the paho callbacks in this same thread; callbacks only record
events), a JSON state file, and the decisions from :mod:`device.behaviour`.

Per connection::

    session += 1 (persisted)      will = offline/connection_lost, key (session, WILL_SEQ)
    CONNECT (v5, clean start 0, session expiry)  ─► CONNACK
    presence online (retained)    subscribe devices/{id}/config, devices/{id}/jobs/+,
                                  devices/{id}/commands/+
    state                         (then every state_interval, and after every change)
    resume the job on record after a boot (see behaviour.resume_job)
    ... serve config, jobs and commands (device.commands: run once, never late) ...
    connection lost ─► reconnect after backoff_delay(attempt) (full jitter)

Run it: ``python -m device.agent --device-id ap-0001 --url mqtt://127.0.0.1:1883
--username ... --state-file ap-0001.json`` (password from ``OUTPOST_DEVICE_PASSWORD``).
Out of the box, with only a claim secret and its serial: ``python -m device.agent --claim
opc_... --serial SN-0001 --url mqtts://... --ca-file ... --state-file ap.json``
(:func:`from_claim`; docs/protocol.md, "Zero-touch provisioning").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel

from device import behaviour as b
from device import commands as dc
from device import diagnostics
from device.download import download, resume_partial
from device.errors import BrokerError, DeviceError, DiagnosticsError, DownloadError
from device.provisioning import provision_blocking
from device.storage import AgentState, load_state, save_state
from outpost.mqtt import Endpoint, paho_client
from outpost.sealing import IdentityKey
from schemas import commands as cmd
from schemas.protocol import (
    CommandRequest,
    CommandStatus,
    ConfigMessage,
    JobState,
    JobStatusMessage,
    encode,
    utc_now,
)
from schemas.topics import Channel, TopicError, device_subscriptions, parse, topic

__all__ = ["Agent", "AgentConfig", "Install", "accept_config", "from_claim", "main"]

Install = Callable[[Path, str], None]
"""Writes a verified image (path, target version) to the inactive slot; raises on failure."""
Scan = Callable[[cmd.ScanArgs], cmd.ScanOutput]
"""Neighbouring networks per band (a device with radios passes its own)."""
HANDLED_KEPT = 64  # command ids kept in the state file


def accept_config(message: ConfigMessage) -> None:
    """Default apply callback: accept everything (a real device configures its radios)."""


def keep_image(image: Path, version: str) -> None:
    """Default install callback: nothing to flash on a reference agent."""


@dataclass
class AgentConfig:
    device_id: str
    host: str
    port: int
    username: str
    password: str
    state_file: Path
    firmware: str = "1.0.0"
    hardware_model: str = "ref-ap"
    state_interval: float = 60.0
    keepalive: int = 30
    session_expiry: int = 3600
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    max_download_rate: float | None = None
    tls: bool = False
    ca_file: str | None = None
    connect_timeout: float = 10.0
    firmware_key: str | None = None  # the api's public key (registration); None: no upgrades
    log_file: Path | None = None  # what a logs command uploads (None: its recent log lines)

    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.tls, self.ca_file, self.username, self.password)


@dataclass
class _Link:
    """What the paho callbacks observed; read and reset by the loop (same thread)."""

    connack: str | None = None
    connected: bool = False
    inbox: deque[paho.MQTTMessage] = field(default_factory=deque)


class Agent:
    """One device. ``run(stop)`` blocks until ``stop`` is set, reconnecting as needed."""

    def __init__(
        self,
        config: AgentConfig,
        logger: logging.Logger,
        *,
        apply_config: b.ApplyConfig = accept_config,
        install: Install = keep_image,
        scan: Scan = diagnostics.no_radios,
    ) -> None:
        self.config = config
        self.log = logger
        self._apply = apply_config
        self._install = install
        self._scan = scan
        self._recent = _Recent()
        logger.addHandler(self._recent)
        self._state = load_state(config.state_file, firmware=config.firmware)
        self._handled = dc.Handled.of(self._state.commands, HANDLED_KEPT)
        self._seq = b.Sequencer(self._state.session)
        self._link = _Link()
        self._boot_pending = True
        self._booted_at = time.monotonic()
        self._counters: dict[str, int | float] = {}
        self._client = self._make_client()

    # ------------------------------------------------------------------ connection

    def _make_client(self) -> paho.Client:
        client = paho_client(self.config.endpoint(), self.config.device_id)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._link.connack = str(reason)
        self._link.connected = not reason.is_failure

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._link.connected = False

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._link.inbox.append(message)

    def _connect(self) -> None:
        """A new session: persist the counter, arm the will, CONNECT and wait for CONNACK."""
        session = self._seq.new_session()
        self._save(self._state.model_copy(update={"session": session}))
        will = b.offline_presence(self.config.device_id, session, "connection_lost")
        self._client.will_set(self._topic(Channel.PRESENCE), encode(will), qos=1, retain=True)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.session_expiry
        self._link = _Link()
        try:
            self._client.connect(
                self.config.host,
                self.config.port,
                self.config.keepalive,
                clean_start=False,
                properties=props,
            )
        except OSError as exc:
            raise BrokerError(f"cannot connect: {exc}") from None
        deadline = time.monotonic() + self.config.connect_timeout
        while self._link.connack is None and time.monotonic() < deadline:
            self._client.loop(timeout=0.1)
        if not self._link.connected:
            self._client.disconnect()
            raise BrokerError(f"connect refused: {self._link.connack or 'no CONNACK'}")

    def _online(self) -> None:
        self.log.info(
            "connected", extra={"device_id": self.config.device_id, "session": self._seq.session}
        )
        presence = b.online_presence(self.config.device_id, self._seq.next_key(), utc_now())
        self._publish(Channel.PRESENCE, presence, retain=True)
        self._client.subscribe([(f, 1) for f in device_subscriptions(self.config.device_id)])
        self.publish_state()
        if self._boot_pending:
            self._boot_pending = False
            self._resume_job()

    # ------------------------------------------------------------------ main loop

    def run(self, stop: threading.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                self._connect()
            except BrokerError as exc:
                delay = b.backoff_delay(
                    attempt, base=self.config.backoff_base, cap=self.config.backoff_cap
                )
                self.log.warning(
                    "connect failed",
                    extra={
                        "device_id": self.config.device_id,
                        "error": str(exc),
                        "attempt": attempt,
                        "retry_in_s": round(delay, 2),
                    },
                )
                attempt += 1
                stop.wait(delay)
                continue
            attempt = 0
            self._online()
            self._serve(stop)
            if not stop.is_set() and not self._boot_pending:
                # Lost the broker (not our reboot): even the first retry is jittered, so a
                # broker restart does not bring the whole fleet back in the same instant.
                stop.wait(
                    b.backoff_delay(0, base=self.config.backoff_base, cap=self.config.backoff_cap)
                )
        self._goodbye("shutdown")

    def _serve(self, stop: threading.Event) -> None:
        next_state = time.monotonic() + self.config.state_interval
        while self._link.connected and not stop.is_set():
            self._client.loop(timeout=0.2)
            while self._link.inbox and self._link.connected:
                self._handle(self._link.inbox.popleft())
            if time.monotonic() >= next_state:
                next_state += self.config.state_interval
                self.publish_state()

    def _goodbye(self, reason: str) -> None:
        """Graceful offline: the same message and key as the will, then DISCONNECT."""
        if not self._link.connected:
            return
        offline = b.offline_presence(self.config.device_id, self._seq.session, reason, utc_now())
        info = self._client.publish(
            self._topic(Channel.PRESENCE), encode(offline), qos=1, retain=True
        )
        deadline = time.monotonic() + 5.0
        while not info.is_published() and time.monotonic() < deadline and self._link.connected:
            self._client.loop(timeout=0.1)
        self._client.disconnect()
        self._client.loop(timeout=0.1)
        self._link.connected = False

    # ------------------------------------------------------------------ publishing

    def _topic(self, channel: Channel, job_id: str | None = None) -> str:
        return topic(channel, self.config.device_id, job_id)

    def _publish(
        self,
        channel: Channel,
        message: BaseModel,
        *,
        retain: bool = False,
        job_id: str | None = None,
    ) -> None:
        self._client.publish(self._topic(channel, job_id), encode(message), qos=1, retain=retain)

    def publish_state(self) -> None:
        state = b.state_message(
            self.config.device_id,
            self._seq.next_key(),
            utc_now(),
            firmware=self._state.firmware,
            hardware_model=self.config.hardware_model,
            config=self._state.config,
            uptime_s=int(time.monotonic() - self._booted_at),
            counters=self._counters,
        )
        self._publish(Channel.STATE, state)

    def _save(self, state: AgentState) -> None:
        save_state(self.config.state_file, state)
        self._state = state

    def _count(self, name: str) -> None:
        self._counters[name] = self._counters.get(name, 0) + 1

    # ------------------------------------------------------------------ inbound

    def _handle(self, message: paho.MQTTMessage) -> None:
        payload = bytes(message.payload)
        try:
            where = parse(message.topic)
        except TopicError:
            self.log.warning("unexpected topic", extra={"topic": message.topic[:200]})
            return
        if where.channel is Channel.CONFIG and payload:
            self._handle_config(payload)
        elif where.channel is Channel.JOB and where.job_id is not None:
            self._handle_job(where.job_id, payload)
        elif where.channel is Channel.COMMAND and where.job_id is not None:
            correlation = getattr(message.properties, "CorrelationData", None)
            self._handle_command(message.topic, where.job_id, payload, correlation)

    def _handle_config(self, payload: bytes) -> None:
        desired = b.parse_config(payload)
        if isinstance(desired, str):
            self._count("config_invalid")
            self.log.warning("config rejected", extra={"reason": desired})
            self.publish_state()
            return
        decision = b.decide_config(desired, self._state.config)
        if decision is not b.ConfigDecision.APPLY:
            self.log.info(
                "config skipped", extra={"version": desired.version, "decision": decision.value}
            )
            return
        report = b.apply_config(desired, self._apply)
        self._save(self._state.model_copy(update={"config": report}))
        self.log.info(
            "config handled",
            extra={"version": report.version, "status": report.status, "error": report.error},
        )
        self.publish_state()

    def _handle_job(self, job_id: str, payload: bytes) -> None:
        command = b.parse_job(payload)
        if isinstance(command, str) or command.job_id != job_id:
            reason = command if isinstance(command, str) else "job id differs from topic"
            self._count("job_invalid")
            self._report_raw(job_id, JobState.REJECTED, reason)
            return
        trust = b.FirmwareTrust(self.config.firmware_key, self.config.hardware_model)
        decision = b.decide_job(command, self._state.job, self._state.firmware, utc_now(), trust)
        self.log.info("job command", extra={"job_id": job_id, "action": decision.action.value})
        if decision.action is b.JobAction.IGNORE:
            return
        if decision.action is b.JobAction.REJECT:
            self._report(decision.record)
            return
        self._save(self._state.model_copy(update={"job": decision.record}))
        self._report(decision.record)
        if decision.action is b.JobAction.START:
            self._run_job(decision.record)

    # ------------------------------------------------------------------ commands

    def _handle_command(
        self, raw_topic: str, command_id: str, payload: bytes, correlation: bytes | None
    ) -> None:
        request = dc.parse(raw_topic, payload)
        if isinstance(request, str):
            if command_id not in self._handled:
                self._remember(command_id)
                self._answer(command_id, correlation, CommandStatus.REJECTED, error=request)
            return
        decision = dc.decide(request, utc_now(), self._handled)
        self.log.info(
            "command",
            extra={"command_id": command_id, "command": request.name, "action": decision.action},
        )
        if decision.action in (dc.Action.IGNORE, dc.Action.EXPIRED):
            return
        self._remember(command_id)  # before running: a reboot must not run twice
        if decision.action is dc.Action.ANSWER:
            assert decision.status is not None
            self._answer(command_id, correlation, decision.status, error=decision.error)
            return
        try:
            output = self._run_command(request, decision.args)
        except DiagnosticsError as exc:
            self._answer(command_id, correlation, CommandStatus.FAILED, error=str(exc))
            return
        self._answer(command_id, correlation, CommandStatus.SUCCEEDED, output)
        if request.name == cmd.CommandName.REBOOT:
            self._reboot()

    def _run_command(self, request: CommandRequest, args: BaseModel | None) -> BaseModel:
        if isinstance(args, cmd.PingArgs):
            return diagnostics.ping(args)
        if isinstance(args, cmd.ScanArgs):
            return self._scan(args)
        if isinstance(args, cmd.CountersArgs):
            return diagnostics.interface_counters(args)
        if isinstance(args, cmd.LogsArgs):
            body = self._log_bytes(args.max_bytes)
            return diagnostics.put_object(args.checked_url(), body, args.key or "")
        return cmd.RebootOutput()

    def _log_bytes(self, limit: int) -> bytes:
        """The tail of the log file, or the agent's recent log lines."""
        path = self.config.log_file
        if path is None:
            return self._recent.text().encode()[-limit:]
        try:
            with path.open("rb") as log:
                log.seek(max(0, path.stat().st_size - limit))
                return log.read(limit)
        except OSError as exc:
            raise DiagnosticsError(f"cannot read {path}: {exc}") from None

    def _remember(self, command_id: str) -> None:
        self._handled.add(command_id)
        self._save(self._state.model_copy(update={"commands": list(self._handled.ids)}))

    def _answer(
        self,
        command_id: str,
        correlation: bytes | None,
        status: CommandStatus,
        output: BaseModel | None = None,
        error: str | None = None,
    ) -> None:
        """Publish the one result and wait (a few seconds at most) for its PUBACK."""
        message = dc.result(
            self.config.device_id,
            self._seq.next_key(),
            utc_now(),
            command_id,
            status,
            output,
            error,
        )
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if correlation is not None:
            props.CorrelationData = correlation
        info = self._client.publish(
            self._topic(Channel.COMMAND_RESULT, command_id),
            encode(message),
            qos=1,
            properties=props,
        )
        deadline = time.monotonic() + 5.0
        while not info.is_published() and time.monotonic() < deadline and self._link.connected:
            self._client.loop(timeout=0.1)

    # ------------------------------------------------------------------ upgrade job

    def _report(self, record: b.JobRecord) -> None:
        firmware = self._state.firmware
        message = b.job_status(
            self.config.device_id, self._seq.next_key(), utc_now(), record, firmware
        )
        self._publish(Channel.JOB_STATUS, message, job_id=record.job_id)

    def _report_raw(self, job_id: str, status: JobState, reason: str) -> None:
        message = JobStatusMessage(
            device_id=self.config.device_id,
            key=self._seq.next_key(),
            ts=utc_now(),
            job_id=job_id,
            status=status,
            reason=reason,
        )
        self._publish(Channel.JOB_STATUS, message, job_id=job_id)

    def _move(
        self,
        record: b.JobRecord,
        status: JobState,
        *,
        progress: float | None = None,
        reason: str | None = None,
    ) -> b.JobRecord:
        moved = record.moved(status, progress=progress, reason=reason)
        self._save(self._state.model_copy(update={"job": moved}))
        self._report(moved)
        self.log.info(
            "job status",
            extra={
                "job_id": moved.job_id,
                "status": status.value,
                "progress": progress,
                "reason": reason,
            },
        )
        return moved

    def _image_path(self, record: b.JobRecord) -> Path:
        return self.config.state_file.with_name(
            f"{self.config.device_id}.{record.job_id}.{record.execution}.img"
        )

    def _resume_job(self) -> None:
        record = self._state.job
        if record is None:
            return
        resumed = b.resume_job(record, self._state.firmware, utc_now())
        if resumed.status in (JobState.QUEUED, JobState.DOWNLOADING):
            self._run_job(resumed)
        elif resumed != record:
            self._move(resumed, resumed.status, progress=resumed.progress, reason=resumed.reason)
        else:
            self._report(record)

    def _run_job(self, record: b.JobRecord) -> None:
        image = self._image_path(record)
        check = b.ImageCheck(record.size, record.sha256)
        resume_partial(image, check)  # after a reboot: continue where the image stopped
        record = self._move(record, JobState.DOWNLOADING, progress=check.progress)
        throttle = b.ProgressThrottle(step=10.0)
        throttle.due(check.progress)

        def on_chunk(progress: b.ImageCheck) -> None:
            nonlocal record
            self._client.loop(timeout=0)  # keep the session alive during long downloads
            if throttle.due(progress.progress) and progress.progress < 100.0:
                record = self._move(record, JobState.DOWNLOADING, progress=progress.progress)

        try:
            download(
                record.url, image, check, on_chunk=on_chunk, max_rate=self.config.max_download_rate
            )
            failure = check.failure()
        except (DownloadError, ValueError) as exc:
            failure = str(exc)
        if failure is not None:
            image.unlink(missing_ok=True)
            self._move(record, JobState.FAILED, progress=check.progress, reason=failure)
            return
        self._install_and_reboot(record, image)

    def _install_and_reboot(self, record: b.JobRecord, image: Path) -> None:
        record = self._move(record, JobState.INSTALLING, progress=100.0)
        try:
            self._install(image, record.target)
        except Exception as exc:  # noqa: BLE001 - any installer failure fails the job
            self._move(record, JobState.FAILED, progress=100.0, reason=f"install failed: {exc}")
            return
        finally:
            image.unlink(missing_ok=True)
        # The new image is in place: from the next boot on we run the target version.
        self._save(self._state.model_copy(update={"firmware": record.target}))
        self._move(record, JobState.REBOOTING, progress=100.0)
        self._reboot()

    def _reboot(self) -> None:
        """Simulated reboot: say goodbye, drop the session; the run loop reconnects."""
        self._goodbye("reboot")
        self._boot_pending = True
        self._booted_at = time.monotonic()


# ---------------------------------------------------------------------- out of the box


def from_claim(config: AgentConfig, claim_secret: str, serial: str) -> AgentConfig:
    """``config`` for a device that starts with only a claim secret and its serial.

    The first run makes the device's identity key and keeps it in the state file before
    it asks; the identity it gets is kept there too, so later runs (reboots) reuse it and
    never ask again. The broker address of ``config`` is where it asks; the identity may
    name another one, which it then uses.
    """
    state = load_state(config.state_file, firmware=config.firmware)
    if state.identity is None:
        if state.identity_key is None:
            state = state.model_copy(update={"identity_key": IdentityKey().seed_text})
            save_state(config.state_file, state)
        key = IdentityKey(state.identity_key)
        where = Endpoint(config.host, config.port, config.tls, config.ca_file)
        got = provision_blocking(where, claim_secret, serial, config.hardware_model, key)
        state = state.model_copy(update={"identity": got})
        save_state(config.state_file, state)
    identity = state.identity
    assert identity is not None
    url = Endpoint.from_url(identity.broker_url) if identity.broker_url else None
    return replace(
        config,
        device_id=identity.device_id,
        username=identity.username,
        password=identity.password,
        firmware_key=identity.firmware_public_key or config.firmware_key,
        host=url.host if url else config.host,
        port=url.port if url else config.port,
        tls=url.tls if url else config.tls,
    )


class _Recent(logging.Handler):
    """The agent's last log records, for a ``logs`` command without a log file."""

    def __init__(self, keep: int = 2000) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.created:.3f} {record.levelname} {record.getMessage()}")

    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)


# ---------------------------------------------------------------------- command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m device.agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device-id", help="required unless --claim")
    parser.add_argument(
        "--claim",
        default=os.environ.get("OUTPOST_DEVICE_CLAIM"),
        help="start out of the box: provision with this claim secret (or "
        "OUTPOST_DEVICE_CLAIM) and --serial, once; the identity is kept in --state-file",
    )
    parser.add_argument("--serial", help="the device's serial number or MAC (with --claim)")
    parser.add_argument("--url", required=True, help="mqtt://host:port or mqtts://host:port")
    parser.add_argument("--username", help="defaults to the device id")
    parser.add_argument("--ca-file", help="CA bundle to verify the broker (mqtts)")
    parser.add_argument(
        "--firmware-key",
        default=os.environ.get("OUTPOST_DEVICE_FIRMWARE_KEY"),
        help="the api's firmware signing public key (from registration); without it the "
        "agent installs nothing",
    )
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument("--firmware", default="1.0.0", help="firmware of a fresh device")
    parser.add_argument("--hardware-model", default="ref-ap")
    parser.add_argument("--state-interval", type=float, default=60.0)
    parser.add_argument("--max-download-rate", type=float, help="bytes/s (slow link)")
    parser.add_argument("--backoff-cap", type=float, default=60.0)
    parser.add_argument("--log-file", type=Path, help="what a logs command uploads (its tail)")
    parser.add_argument(
        "--applied-config",
        type=Path,
        help="write each applied config here as JSON (demo apply callback)",
    )
    return parser.parse_args(argv)


def _config_from(args: argparse.Namespace) -> AgentConfig:
    try:
        url = Endpoint.from_url(args.url, ca_file=args.ca_file)
    except ValueError as exc:
        raise SystemExit(f"--url: {exc}") from None
    return AgentConfig(
        device_id=args.device_id or "unprovisioned",
        host=url.host,
        port=url.port,
        username=args.username or url.username or args.device_id or "",
        password=os.environ.get("OUTPOST_DEVICE_PASSWORD") or url.password or "",
        state_file=args.state_file,
        firmware=args.firmware,
        hardware_model=args.hardware_model,
        state_interval=args.state_interval,
        max_download_rate=args.max_download_rate,
        backoff_cap=args.backoff_cap,
        tls=url.tls,
        ca_file=args.ca_file,
        firmware_key=args.firmware_key,
        log_file=args.log_file,
    )


def _file_writer(path: Path) -> b.ApplyConfig:
    def apply(message: ConfigMessage) -> None:
        path.write_text(json.dumps(message.model_dump(mode="json"), indent=1))

    return apply


def main(argv: list[str] | None = None) -> None:
    from outpost import logs

    logs.configure()
    args = _parse_args(argv)
    if not args.device_id and not (args.claim and args.serial):
        raise SystemExit("give --device-id, or --claim and --serial")
    config = _config_from(args)
    if args.claim:
        try:
            config = from_claim(config, args.claim, args.serial)
        except DeviceError as exc:
            raise SystemExit(f"provisioning failed: {exc}") from None
    apply = _file_writer(args.applied_config) if args.applied_config else accept_config
    agent = Agent(config, logging.getLogger("outpost.device"), apply_config=apply)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.run(stop)


if __name__ == "__main__":
    main()
