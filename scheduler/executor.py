"""The rollout executor: one :meth:`RolloutExecutor.tick` moves every active rollout on.

Per rollout, under its lease (:mod:`scheduler.claims`), each tick:

1. ``canceling`` (api request): cancel executions not sent yet, then ``canceled``;
2. track sent executions from what the bridge recorded (:mod:`scheduler.executions`);
3. ``paused``: stop here (tracking goes on);
4. abort criteria (:mod:`scheduler.abort`), end time and end behaviour;
5. inside the schedule (:mod:`scheduler.windows`): start the next wave when the previous
   one met its success condition (:mod:`scheduler.waves`), creating its executions;
6. send due executions, at most ``max_per_minute`` per minute.

Sending without duplicates or gaps when an instance may die at any moment
------------------------------------------------------------------------
Executions exist in MongoDB *before* anything is published, and a command goes out in
three steps, each a conditional single-document update (FerretDB has no transactions):

a. **intent**: ``{sent_at: null, attempt, intent: <what we read>, fence <= our token}``
   → ``{intent: <stamp of this batch>, fence: token, next_try_at: now + settle}``. A
   compare-and-set: of two instances only one stamps an execution, and a former holder
   (lower token) can no longer stamp what a newer holder touched.
b. **publish** the stamped executions (QoS 1, wait for PUBACK), each with a URL signed
   now whose lifetime never passes the window's end; the lease is checked just before.
c. **mark** ``{intent: stamp, sent_at: null}`` → ``{sent_at: now}``.

If the instance dies between (a) and (c), the execution stays stamped but unmarked. It
becomes due again ``settle`` later for whoever holds the lease then: if the device has
reported on the job by then (the bridge recorded ``report``), it got the command and the
execution is only marked; otherwise it is published again **with the same attempt
number**. That re-publish is the residual window: a device that received the first copy
but whose status did not reach MongoDB within ``settle`` receives the command twice, and
must (the reference agent does) ignore a ``(job_id, execution)`` pair it already
handles. The window is one batch (``batch`` executions) long, per crash.

Offline devices (presence not ``online``) stay queued with an exponential backoff on
``next_try_at`` and are sent when they are back. A retry (attempt + 1) always signs a new
URL. Rollout progress is written with a fence too, so a former holder cannot overwrite it.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import ValidationError
from pymongo.operations import UpdateOne

from outpost.mongo import Document
from scheduler.abort import abort_reason
from scheduler.claims import Claims, Clock, LeaseState
from scheduler.errors import LeaseLost, PublishError, RolloutDataError
from scheduler.executions import DeviceView, ExecutionView, Transition, backoff, decide
from scheduler.metrics import SchedulerMetrics
from scheduler.publisher import CommandSink, Outgoing, Presigner
from scheduler.store import RolloutStore
from scheduler.waves import (
    WaveCounts,
    WaveOutcome,
    exponential_rate,
    gated,
    minute_budget,
    wave_outcome,
    wave_size,
)
from scheduler.windows import open_until
from schemas.documents import execution_id
from schemas.protocol import FirmwareRef, JobCommand, encode
from schemas.rollouts import (
    ExecutionStatus,
    ExponentialRate,
    MissAction,
    RolloutProgress,
    RolloutSpec,
    RolloutStatus,
)
from schemas.topics import Channel, topic

__all__ = ["ExecutorConfig", "RolloutExecutor"]

S = ExecutionStatus
_NOT_GT = "$not"


@dataclass(frozen=True)
class ExecutorConfig:
    lease_ttl: timedelta = timedelta(seconds=30)
    lease_margin: timedelta = timedelta(seconds=5)
    batch: int = 64
    settle: timedelta = timedelta(seconds=15)
    presign_seconds: int = 3600
    min_url_seconds: int = 60


@dataclass
class _Run:
    """One rollout during one tick."""

    doc: Document
    spec: RolloutSpec
    lease: LeaseState
    now: datetime
    progress: RolloutProgress
    firmware: Document = field(default_factory=dict)
    wave_met: bool = False

    @property
    def job(self) -> str:
        return str(self.doc["_id"])

    @property
    def status(self) -> RolloutStatus:
        return RolloutStatus(self.doc["status"])


def parse_spec(doc: Document) -> RolloutSpec:
    fields = {k: v for k, v in doc.items() if k in RolloutSpec.model_fields}
    try:
        return RolloutSpec.model_validate(fields)
    except ValidationError as exc:
        raise RolloutDataError(f"invalid rollout definition: {exc.errors()[:3]}") from None


def fenced(token: int) -> Document:
    return {"fence": {_NOT_GT: {"$gt": token}}}


def transition_op(ev: ExecutionView, t: Transition, token: int, now: datetime) -> UpdateOne:
    query = {"_id": ev.id, "attempt": ev.attempt, "status": ev.status.value, **fenced(token)}
    if t.retry:
        stale = ev.report.k if ev.report else ev.stale_k
        update: Document = {
            "status": S.QUEUED.value, "attempt": ev.attempt + 1, "sent_at": None,
            "intent": None, "next_try_at": now + backoff(ev.attempt - 1), "stale_k": stale,
            "last_failure": {"status": t.status.value, "reason": t.reason}, "fence": token}
    else:
        update = {"status": t.status.value, "reason": t.reason, "fence": token}
        if t.final:
            update["finished_at"] = now
    return UpdateOne(query, {"$set": update})


def new_execution(run: _Run, device_id: str, wave: int) -> Document:
    return {"_id": execution_id(run.job, device_id), "tenant_id": run.doc.get("tenant_id"),
            "rollout_id": run.job, "job_id": run.job, "device_id": device_id, "wave": wave,
            "attempt": 1, "status": S.QUEUED.value, "created_at": run.now, "sent_at": None,
            "intent": None, "next_try_at": run.now, "tries": 0, "fence": run.lease.token}


def is_online(device: Document | None) -> bool:
    return bool(device and (device.get("presence") or {}).get("status") == "online")


def device_view(device: Document | None) -> DeviceView | None:
    if device is None:
        return None
    return DeviceView(is_online(device), (device.get("state") or {}).get("firmware"))


class RolloutExecutor:
    def __init__(self, store: RolloutStore, claims: Claims, sink: CommandSink,
                 presigner: Presigner, metrics: SchedulerMetrics, clock: Clock,
                 logger: logging.Logger, config: ExecutorConfig | None = None) -> None:
        self.store = store
        self.claims = claims
        self.sink = sink
        self.presigner = presigner
        self.metrics = metrics
        self.clock = clock
        self.log = logger
        self.config = config or ExecutorConfig()
        self._leases: dict[str, LeaseState] = {}

    # -- the tick ------------------------------------------------------------------------

    async def tick(self) -> None:
        """Move every active rollout this instance can lease by one step."""
        rollouts = await self.store.active_rollouts()
        for status in RolloutStatus:
            self.metrics.rollouts.labels(status.value).set(
                sum(1 for r in rollouts if r.get("status") == status.value))
        for doc in rollouts:
            lease = await self._hold(str(doc["_id"]))
            if lease is not None:
                await self._guarded(doc, lease)

    async def release_all(self) -> None:
        """Graceful stop: hand every lease over at once."""
        for lease in list(self._leases.values()):
            await self.claims.release(lease)
        self._leases.clear()

    async def _hold(self, job: str) -> LeaseState | None:
        name = f"rollout:{job}"
        lease = await self.claims.hold(name, self.config.lease_ttl, self._leases.get(name))
        self.metrics.claims.labels("rollout", "won" if lease else "lost").inc()
        if lease is None:
            self._leases.pop(name, None)
        else:
            self._leases[name] = lease
        return lease

    async def _guarded(self, doc: Document, lease: LeaseState) -> None:
        try:
            await self._run(doc, lease)
        except LeaseLost as exc:
            self._leases.pop(lease.name, None)
            self.log.warning("lease lost mid-tick", extra={"job_id": doc["_id"],
                                                            "error": str(exc)})
        except RolloutDataError as exc:
            self.metrics.rejected.labels("rollout").inc()
            self.log.error("rollout cannot run", extra={"job_id": doc["_id"],
                                                         "error": str(exc)})
            progress = RolloutProgress(reason=str(exc)[:500])
            await self.store.save(str(doc["_id"]), lease.token, progress,
                                  RolloutStatus.ABORTED)

    async def _run(self, doc: Document, lease: LeaseState) -> None:
        spec = parse_spec(doc)
        progress = RolloutProgress.model_validate(doc.get("progress") or {})
        run = _Run(doc, spec, lease, self.clock(), progress)
        if run.status is RolloutStatus.CANCELING:
            await self._stop(run, RolloutStatus.CANCELED, "canceled")
            return
        in_flight = await self._track(run)
        if run.status is RolloutStatus.PAUSED:
            return
        counts = await self.store.counts(run.job)
        reason = abort_reason(spec.abort, counts)
        if reason is not None:
            await self._stop(run, RolloutStatus.ABORTED, reason)
            return
        if spec.schedule.end_at and run.now >= spec.schedule.end_at:
            await self._end(run, in_flight)
            return
        until = open_until(spec.schedule, run.now)
        if until is None:
            return
        if await self._advance(run, counts):
            await self._send(run, until)
            await self._save(run, RolloutStatus.RUNNING)

    # -- stopping ------------------------------------------------------------------------

    async def _save(self, run: _Run, status: RolloutStatus | None = None) -> None:
        if (status is not None and status is not run.status
                and await self.store.save(run.job, run.lease.token, run.progress, status,
                                          expect=run.status.value)):
            self.log.info("rollout status", extra={"job_id": run.job, "status": status.value,
                                                   "reason": run.progress.reason})
            return
        await self.store.save(run.job, run.lease.token, run.progress)

    async def _stop(self, run: _Run, status: RolloutStatus, reason: str) -> None:
        canceled = await self.store.cancel_unsent(run.job, run.lease.token, run.now)
        run.progress = run.progress.model_copy(update={"reason": reason})
        self.log.info("rollout stopping", extra={"job_id": run.job, "status": status.value,
                                                 "canceled": canceled, "reason": reason})
        await self._save(run, status)

    async def _end(self, run: _Run, in_flight: int) -> None:
        if run.spec.schedule.end_behavior.value == "cancel":
            await self.store.cancel_unsent(run.job, run.lease.token, run.now)
        if in_flight == 0:
            run.progress = run.progress.model_copy(update={"reason": "end time reached"})
            await self._save(run, RolloutStatus.COMPLETED)

    # -- tracking ------------------------------------------------------------------------

    async def _track(self, run: _Run) -> int:
        """Apply status changes to sent executions; return how many stay open."""
        docs = await self.store.tracked(run.job)
        devices = await self.store.device_views([d["device_id"] for d in docs])
        ops, still_open = [], 0
        for doc in docs:
            ev = ExecutionView.from_doc(doc)
            t = decide(run.spec, ev, device_view(devices.get(doc["device_id"])), run.now)
            still_open += t is None or not t.final
            if t is not None:
                ops.append(transition_op(ev, t, run.lease.token, run.now))
                self.metrics.transitions.labels("retry" if t.retry else t.status.value).inc()
        await self.store.apply(ops)
        return still_open

    # -- waves ---------------------------------------------------------------------------

    async def _advance(self, run: _Run, counts: dict[S, int]) -> bool:
        """Start the next wave if due; False if the rollout paused, aborted or finished."""
        if gated(run.spec):
            verdict = await self._gate(run)
            if verdict is not None:
                return await self._verdict(run, verdict)
            if not run.wave_met:
                return True
            size = wave_size(run.spec, await self.store.target_count(
                run.doc.get("tenant_id"), run.spec.target))
        else:
            size = await self._exponential_room(run, counts)
        created = await self._start_wave(run, size) if size > 0 else None
        if created == 0 and not (counts.get(S.QUEUED, 0) + counts.get(S.IN_PROGRESS, 0)):
            run.progress = run.progress.model_copy(update={"reason": "all targets done"})
            await self._save(run, RolloutStatus.COMPLETED)
            return False
        return True

    async def _gate(self, run: _Run) -> RolloutStatus | None:
        """Evaluate the current wave's success condition; a status if it missed."""
        p = run.progress
        if p.wave == 0 or p.wave_started_at is None:
            run.wave_met = True
            return None
        wc = await self.store.counts(run.job, p.wave)
        counts = WaveCounts(sum(wc.values()), wc.get(S.SUCCEEDED, 0),
                            sum(n for s, n in wc.items() if s.terminal))
        outcome = wave_outcome(run.spec.success, counts, p.wave_started_at, run.now)
        if outcome is WaveOutcome.MISSED and p.accepted_wave >= p.wave:
            outcome = WaveOutcome.MET  # the admin resumed after this wave missed
        run.wave_met = outcome is WaveOutcome.MET
        if outcome is not WaveOutcome.MISSED:
            return None
        share = 100 * counts.succeeded / max(1, counts.total)
        run.progress = p.model_copy(update={
            "reason": f"wave {p.wave}: {share:.0f}% succeeded < "
                      f"{run.spec.success.min_success_percent:g}%",
            "accepted_wave": p.wave})
        return (RolloutStatus.PAUSED if run.spec.success.on_miss is MissAction.PAUSE
                else RolloutStatus.ABORTED)

    async def _verdict(self, run: _Run, status: RolloutStatus) -> bool:
        if status is RolloutStatus.ABORTED:
            await self._stop(run, status, run.progress.reason or "aborted")
        else:
            await self._save(run, status)
        return False

    async def _exponential_room(self, run: _Run, counts: dict[S, int]) -> int:
        """Exponential: how many new executions fit this minute next to the backlog."""
        plan = run.spec.waves
        assert isinstance(plan, ExponentialRate)
        rate = exponential_rate(plan, await self.store.sent_count(run.job),
                                counts.get(S.SUCCEEDED, 0), run.spec.max_per_minute)
        _, _, left = minute_budget(rate, run.progress.minute_started_at,
                                      run.progress.sent_this_minute, run.now)
        backlog = len(await self.store.due(run.job, run.now, rate))
        run.progress = run.progress.model_copy(update={"rate_per_minute": float(rate)})
        return max(0, left - backlog)

    async def _start_wave(self, run: _Run, size: int) -> int:
        ids = await self.store.eligible(run.job, run.doc.get("tenant_id"),
                                        run.spec.target, size)
        if not ids:
            return 0
        wave = run.progress.wave + 1
        self.claims.check(run.lease, self.config.lease_margin)
        created = await self.store.create([new_execution(run, d, wave) for d in ids])
        run.progress = run.progress.model_copy(update={"wave": wave,
                                                       "wave_started_at": run.now})
        await self._save(run)
        self.log.info("wave started", extra={"job_id": run.job, "wave": wave,
                                             "devices": len(ids), "inserted": created})
        return len(ids)

    # -- sending -------------------------------------------------------------------------

    def _cap(self, run: _Run) -> int:
        plan = run.spec.waves
        if isinstance(plan, ExponentialRate) and run.progress.rate_per_minute:
            return min(run.spec.max_per_minute, int(run.progress.rate_per_minute))
        return run.spec.max_per_minute

    async def _send(self, run: _Run, until: datetime) -> None:
        lifetime = min(self.config.presign_seconds,
                       math.floor((until - run.now).total_seconds()))
        if lifetime < self.config.min_url_seconds:
            return
        p = run.progress
        start, sent, left = minute_budget(self._cap(run), p.minute_started_at,
                                          p.sent_this_minute, run.now)
        while left > 0:
            due = await self.store.due(run.job, run.now, min(left, self.config.batch))
            if not due:
                break
            published = await self._batch(run, due, lifetime)
            sent, left = sent + published, left - published
            if len(due) < self.config.batch or published == 0:
                break
        run.progress = run.progress.model_copy(update={"minute_started_at": start,
                                                       "sent_this_minute": sent})

    async def _firmware(self, run: _Run) -> Document:
        if not run.firmware:
            doc = await self.store.firmware(run.spec.firmware.id)
            if doc is None or str(doc.get("version")) != run.spec.firmware.version:
                raise RolloutDataError(f"firmware {run.spec.firmware.id} "
                                       f"{run.spec.firmware.version} not found")
            run.firmware = doc
        return run.firmware

    async def _batch(self, run: _Run, due: list[Document], lifetime: int) -> int:
        """Intent, publish, mark for one batch; returns how many were published."""
        devices = await self.store.device_views([d["device_id"] for d in due])
        online = [d for d in due if is_online(devices.get(d["device_id"]))]
        await self._postpone([d for d in due if d not in online], run)
        stamp = f"{self.claims.holder}:{run.lease.token}:{secrets.token_hex(6)}"
        await self.store.apply([self._intent_op(run, d, stamp) for d in online])
        held = await self.store.holding(stamp)
        if not held:
            return 0
        self.claims.check(run.lease, self.config.lease_margin)
        messages = await self._commands(run, held, lifetime)
        try:
            await self.sink.publish_all(messages)
        except PublishError as exc:
            self.metrics.errors.labels("publish").inc()
            self.log.warning("publish failed; retried after settle",
                             extra={"job_id": run.job, "error": str(exc)})
            return 0
        expires = run.now + timedelta(seconds=lifetime)
        await self.store.apply([UpdateOne({"_id": d["_id"], "intent": stamp, "sent_at": None},
                                          {"$set": {"sent_at": self.clock(),
                                                    "url_expires_at": expires}})
                                for d in held])
        self.metrics.commands.inc(len(held))
        self.metrics.republished.inc(sum(1 for d in due if d.get("intent")
                                         and d["_id"] in {h["_id"] for h in held}))
        return len(held)

    def _intent_op(self, run: _Run, doc: Document, stamp: str) -> UpdateOne:
        query = {"_id": doc["_id"], "attempt": doc["attempt"], "status": S.QUEUED.value,
                 "sent_at": None, "intent": doc.get("intent"), **fenced(run.lease.token)}
        ev = ExecutionView.from_doc(doc)
        if doc.get("intent") and ev.current_report is not None:
            # A former holder published it and the device answered: only mark it sent.
            when = doc.get("intent_at") or run.now
            return UpdateOne(query, {"$set": {"sent_at": when, "fence": run.lease.token}})
        return UpdateOne(query, {"$set": {
            "intent": stamp, "intent_at": run.now, "fence": run.lease.token,
            "next_try_at": run.now + self.config.settle}})

    async def _postpone(self, offline: list[Document], run: _Run) -> None:
        ops = [UpdateOne({"_id": d["_id"], "attempt": d["attempt"], "sent_at": None,
                          **fenced(run.lease.token)},
                         {"$set": {"next_try_at": run.now + backoff(int(d.get("tries", 0))),
                                   "fence": run.lease.token}, "$inc": {"tries": 1}})
               for d in offline]
        await self.store.apply(ops)

    async def _commands(self, run: _Run, held: list[Document], lifetime: int) -> list[Outgoing]:
        fw = await self._firmware(run)
        expires = run.now + timedelta(seconds=lifetime)
        out = []
        for doc in held:
            url = self.presigner.get_url(str(fw["s3_key"]), lifetime)
            ref = FirmwareRef(version=run.spec.firmware.version, size=int(fw["size"]),
                              sha256=str(fw["sha256"]), url=url, url_expires_at=expires)
            command = JobCommand(job_id=run.job, execution=int(doc["attempt"]),
                                 firmware=ref, issued_at=run.now)
            out.append(Outgoing(topic(Channel.JOB, doc["device_id"], run.job),
                                encode(command), lifetime))
        return out
