"""The rollout executor: one :meth:`RolloutExecutor.tick` moves every active rollout on.

Per rollout, under its lease (:mod:`scheduler.claims`), each tick:

1. ``canceling`` (api request): cancel executions not sent yet, then ``canceled``;
2. track sent executions from what the bridge recorded (:mod:`scheduler.executions`);
3. ``paused``: stop here (tracking goes on);
4. abort criteria (:mod:`scheduler.abort`), end time and end behaviour;
5. inside the schedule (:mod:`scheduler.windows`): start the next wave when the previous
   one met its success condition (:mod:`scheduler.waves`), creating its executions;
6. send due executions, at most ``max_per_minute`` per minute, batch by batch, for at
   most half a usable lease period (:mod:`scheduler.budget`); the rest on the next ticks.

The lease is renewed at the start of the rollout's turn and, when due, at each
checkpoint inside it (between parts of the tracking reads and of a new wave, before each
batch is claimed and before it is published; :mod:`scheduler.budget`), so a slow
database makes ticks send less, and does not lose the lease to another instance. What
each tick reads is kept small for FerretDB v1, which scans a collection for every
filter but ``_id`` (bench/RESULTS.md, "Rollout executor tick at 5,000 executions"):
one read of the execution counts, one read of due executions for several batches,
writes and claim checks by ``_id``, and devices read only for the health gate.

Sending without duplicates or gaps when an instance may die at any moment
------------------------------------------------------------------------
Executions exist in MongoDB *before* anything is published. On FerretDB v1 a conditional
update is not atomic (see :mod:`scheduler.claims`), so the exclusive step is an insert
into ``scheduler_sends``; a command goes out in four steps:

a. **claim**: insert ``{_id: "<execution>#<attempt>", token, stamp}``. Of any number of
   instances (a former lease holder included) exactly one inserts it, once per attempt;
b. **mark** the execution ``sent_at`` *before* publishing (the device cannot report on
   an attempt it has not received, so no bridge write races this one);
c. a lease checkpoint (renewed if due; :class:`LeaseLost` if it ends within
   ``lease_margin``), then **publish** (QoS 1, wait for PUBACK) with a URL signed now
   whose lifetime (computed when the batch began) never passes the window's end and an
   MQTT message expiry equal to that lifetime;
d. **confirm**: ``published_at`` on the claim.

A claim left unconfirmed (the sender died between (a) and (d), or the broker did not
ack) is taken up ``settle`` later by whoever holds the lease then: if the device
reported on the job (the bridge recorded ``report``), it got the command and the claim
is only confirmed; otherwise the command is published again **with the same attempt
number**, at most once per fencing token (claim ``...#r<token>``). That re-publish is the
residual window: a device that received the first copy but whose status did not reach
MongoDB within ``settle`` gets it twice, and must (the reference agent does) ignore a
``(job_id, execution)`` pair it already handles. It spans at most one batch (``batch``
commands) per crash. A former holder paused after its lease check, past its lease, can
still publish the batch it had claimed: the same, device-deduplicated, case.

Offline devices (presence not ``online``) stay queued with an exponential backoff on
``next_try_at`` and are sent when they are back. A retry (attempt + 1) signs a new URL.
Rollout progress is written with the fencing token in its filter (best effort on
FerretDB, exact on MongoDB); a lost progress write only delays a wave by one tick.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from outpost.store import Document, Update
from scheduler.abort import abort_reason
from scheduler.budget import LeaseStep, TickBudget
from scheduler.claims import Claims, LeaseState
from scheduler.clock import Clock
from scheduler.errors import LeaseLost, PublishError, RolloutDataError, SchedulerError
from scheduler.executions import ExecutionView, Transition, backoff, decide
from scheduler.metrics import SchedulerMetrics
from scheduler.publisher import CommandSink, Outgoing, Presigner
from scheduler.store import Counts, RolloutStore
from scheduler.windows import open_until
from schemas.documents import (
    FirmwareDoc,
    JobExecutionDoc,
    RolloutDoc,
    RolloutProgressDoc,
    execution_id,
)
from schemas.protocol import FirmwareRef, JobCommand, encode
from schemas.rollouts import (
    ExecutionStatus,
    ExponentialRate,
    MissAction,
    RolloutProgress,
    RolloutSpec,
    RolloutStatus,
    rollout_status,
)
from schemas.topics import Channel, topic
from schemas.waves import (
    MINUTE,
    WaveCounts,
    WaveOutcome,
    exponential_rate,
    gated,
    minute_budget,
    wave_outcome,
    wave_size,
)

__all__ = ["ExecutorConfig", "RolloutExecutor"]

S = ExecutionStatus
_NOT_GT = "$not"
# Executions whose reports are read (or created) between two lease checkpoints: on
# FerretDB ~0.5 s of indexed reads or inserts, a few seconds on a loaded machine.
CHUNK = 500
# Batches of due executions read at once: FerretDB v1 scans and sorts the collection for
# each read whatever its limit (~1 s at 5,000 executions here), so one read serves
# several batches. Only the lease holder changes executions, so they stay due meanwhile.
READ_AHEAD = 16


@dataclass(frozen=True)
class ExecutorConfig:
    lease_ttl: timedelta = timedelta(seconds=30)
    lease_margin: timedelta = timedelta(seconds=5)
    batch: int = 64
    settle: timedelta = timedelta(seconds=15)
    presign_seconds: int = 3600
    min_url_seconds: int = 60

    @property
    def budget(self) -> TickBudget:
        return TickBudget(self.lease_ttl, self.lease_margin)


@dataclass
class _Run:
    """One rollout during one tick."""

    rollout: RolloutDoc
    lease: LeaseState  # renewed on the way (RolloutExecutor._keep)
    now: datetime  # the tick's time, read again before each batch
    progress: RolloutProgress
    status: RolloutStatus  # as both the api and we read it (schemas.rollouts.rollout_status)
    firmware: FirmwareDoc | None = None
    wave_met: bool = False
    counts: Counts = field(default_factory=Counts)  # read once per tick

    @property
    def job(self) -> str:
        return self.rollout.id

    @property
    def spec(self) -> RolloutSpec:
        return self.rollout.spec

    @property
    def tenant(self) -> str:
        return self.rollout.tenant_id


def _status(rollout: RolloutDoc, stored: RolloutProgressDoc | None, now: datetime) -> RolloutStatus:
    return rollout_status(
        rollout.spec,
        rollout.control,
        stored.status if stored else None,
        stored.control_rev if stored else None,
        now,
    )


def fenced(token: int) -> Document:
    return {"fence": {_NOT_GT: {"$gt": token}}}


def transition_op(ev: ExecutionView, t: Transition, token: int, now: datetime) -> Update:
    query = {"_id": ev.id, "attempt": ev.attempt, "status": ev.status.value, **fenced(token)}
    if t.retry:
        stale = ev.report.k if ev.report else ev.stale_k
        update: Document = {
            "status": S.QUEUED.value,
            "attempt": ev.attempt + 1,
            "sent_at": None,
            "next_try_at": now + backoff(ev.attempt - 1),
            "stale_k": stale,
            "last_failure": {"status": t.status.value, "reason": t.reason},
            "fence": token,
        }
    else:
        update = {"status": t.status.value, "reason": t.reason, "fence": token}
        if t.final:
            update["finished_at"] = now
    return Update(query, {"$set": update})


def new_execution(run: _Run, device_id: str, wave: int) -> JobExecutionDoc:
    return JobExecutionDoc(
        id=execution_id(run.job, device_id),
        tenant_id=run.tenant,
        rollout_id=run.job,
        job_id=run.job,
        device_id=device_id,
        wave=wave,
        attempt=1,
        status=S.QUEUED,
        created_at=run.now,
        next_try_at=run.now,
        fence=run.lease.token,
    )


class RolloutExecutor:
    def __init__(
        self,
        store: RolloutStore,
        claims: Claims,
        sink: CommandSink,
        presigner: Presigner,
        metrics: SchedulerMetrics,
        clock: Clock,
        logger: logging.Logger,
        config: ExecutorConfig | None = None,
    ) -> None:
        self.store = store
        self.claims = claims
        self.sink = sink
        self.presigner = presigner
        self.metrics = metrics
        self.clock = clock
        self.log = logger
        self.config = config or ExecutorConfig()
        self.budget = self.config.budget
        self._leases: dict[str, LeaseState] = {}

    # -- the tick ------------------------------------------------------------------------

    async def tick(self) -> None:
        """Move every active rollout this instance can lease by one step."""
        rollouts = await self.store.active_rollouts()
        now = self.clock()
        seen = [_status(a.rollout, a.progress, now) for a in rollouts if a.rollout]
        for status in RolloutStatus:
            self.metrics.rollouts.labels(status.value).set(seen.count(status))
        for gone in set(self._leases) - {_lease_name(a.id) for a in rollouts}:
            del self._leases[gone]  # settled: nothing left to renew or hand over
        for active in rollouts:
            lease = await self._hold(active.id)
            if lease is None:
                continue
            if active.rollout is None:
                await self._reject(active.id, active.tenant_id, active.error or "", lease)
            else:
                await self._guarded(active.rollout, active.progress, lease)

    async def release_all(self) -> None:
        """Graceful stop: hand every lease over at once."""
        for lease in list(self._leases.values()):
            await self.claims.release(lease)
        self._leases.clear()

    async def _hold(self, job: str) -> LeaseState | None:
        name = _lease_name(job)
        lease = await self.claims.hold(name, self.config.lease_ttl, self._leases.get(name))
        self.metrics.claims.labels("rollout", "won" if lease else "lost").inc()
        if lease is None:
            self._leases.pop(name, None)
        else:
            self._leases[name] = lease
        return lease

    async def _keep(self, run: _Run) -> None:
        """A checkpoint inside a tick (:mod:`scheduler.budget`): renew this run's lease
        when it is due, :class:`LeaseLost` when it is at its end or was taken over; then
        renew the other leases this instance holds that are due, so that a long turn of
        one rollout does not let the others' leases lapse before their turn."""
        now = self.clock()
        step = self.budget.lease_step(run.lease.expires_at, now)
        if step is LeaseStep.STOP:
            raise LeaseLost(f"lease {run.lease.name} about to expire")
        if step is LeaseStep.RENEW:
            run.lease = await self._renew(run.lease)
        for other in [v for k, v in self._leases.items() if k != run.lease.name]:
            if self.budget.lease_step(other.expires_at, now) is LeaseStep.RENEW:
                try:
                    await self._renew(other)
                except LeaseLost as exc:  # its own turn in the tick takes it again, or not
                    self._leases.pop(other.name, None)
                    self.log.warning("lease lost", extra={"lease": other.name, "error": str(exc)})

    async def _renew(self, lease: LeaseState) -> LeaseState:
        try:
            renewed = await self.claims.renew(lease, self.config.lease_ttl)
        except LeaseLost:
            self.metrics.claims.labels("rollout", "lost").inc()
            raise
        self.metrics.claims.labels("rollout", "renewed").inc()
        self._leases[lease.name] = renewed
        return renewed

    async def _guarded(
        self, rollout: RolloutDoc, progress: RolloutProgressDoc | None, lease: LeaseState
    ) -> None:
        try:
            await self._run(rollout, progress, lease)
        except LeaseLost as exc:
            self._leases.pop(lease.name, None)
            self.log.warning("lease lost mid-tick", extra={"job_id": rollout.id, "error": str(exc)})
        except RolloutDataError as exc:
            await self._reject(rollout.id, rollout.tenant_id, str(exc), lease)
        except SchedulerError as exc:  # this rollout only; the others still run
            self.metrics.errors.labels(type(exc).__name__).inc()
            self.log.error("rollout step failed", extra={"job_id": rollout.id, "error": str(exc)})

    async def _reject(self, rollout_id: str, tenant_id: str, why: str, lease: LeaseState) -> None:
        """A rollout that cannot run (bad definition, image gone) is aborted with the reason."""
        self.metrics.rejected.labels("rollout").inc()
        self.log.error("rollout cannot run", extra={"job_id": rollout_id, "error": why})
        stopped = RolloutProgress(reason=why[:500])
        await self.store.save(
            rollout_id, tenant_id, lease.token, stopped, RolloutStatus.ABORTED, None, self.clock()
        )

    async def _run(
        self, rollout: RolloutDoc, stored: RolloutProgressDoc | None, lease: LeaseState
    ) -> None:
        now = self.clock()
        progress = stored.progress if stored else RolloutProgress()
        run = _Run(rollout, lease, now, progress, _status(rollout, stored, now))
        if run.status is RolloutStatus.CANCELING:
            await self._stop(run, RolloutStatus.CANCELED, "canceled")
            return
        if run.status.final:
            await self._follow(run)
            return
        in_flight = await self._track(run)
        if run.status is RolloutStatus.PAUSED:
            await self._save(run, RolloutStatus.PAUSED)
            return
        spec = run.spec
        run.counts = await self.store.counts(run.job)
        counts = run.counts.total()
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
        """Write our progress and status (``status``, else the current one) for this run.

        The control revision recorded is the admin request this status answers: a pause
        we decide holds until the admin sends a newer request.
        """
        new = status or run.status
        if new is RolloutStatus.CANCELING:
            new = RolloutStatus.RUNNING  # not ours to write; the next tick cancels
        saved = await self.store.save(
            run.job,
            run.tenant,
            run.lease.token,
            run.progress,
            new,
            run.rollout.control.rev,
            run.now,
        )
        if saved and new is not run.status:
            self.log.info(
                "rollout status",
                extra={"job_id": run.job, "status": new.value, "reason": run.progress.reason},
            )
        run.status = new

    async def _close_sent(self, run: _Run) -> tuple[int, int]:
        """Apply the reports of sent executions, then cancel every unsent one (the
        retries just decided included); returns (canceled, sent and still open)."""
        await self._track(run)
        canceled = await self.store.cancel_unsent(run.job, run.lease.token, run.now)
        return canceled, len(await self.store.tracked(run.job))

    async def _stop(self, run: _Run, status: RolloutStatus, reason: str) -> None:
        canceled, open_ = await self._close_sent(run)
        run.progress = run.progress.model_copy(update={"reason": reason, "open_executions": open_})
        self.log.info(
            "rollout stopping",
            extra={
                "job_id": run.job,
                "status": status.value,
                "canceled": canceled,
                "reason": reason,
                "open_executions": open_,
            },
        )
        await self._save(run, status)

    async def _follow(self, run: _Run) -> None:
        """A stopped rollout: apply the reports of commands already sent, send nothing.

        A failed attempt is not retried (its retry is canceled at once), so every open
        execution ends succeeded, failed, rejected or timed out, and then the rollout is
        no longer followed.
        """
        _, open_ = await self._close_sent(run)
        run.progress = run.progress.model_copy(update={"open_executions": open_})
        if open_ == 0:
            self.log.info(
                "stopped rollout settled", extra={"job_id": run.job, "status": run.status.value}
            )
        await self._save(run)

    async def _end(self, run: _Run, in_flight: int) -> None:
        if run.spec.schedule.end_behavior.value == "cancel":
            await self.store.cancel_unsent(run.job, run.lease.token, run.now)
        if in_flight == 0:
            run.progress = run.progress.model_copy(update={"reason": "end time reached"})
            await self._save(run, RolloutStatus.COMPLETED)

    # -- tracking ------------------------------------------------------------------------

    async def _track(self, run: _Run) -> int:
        """Apply status changes to sent executions; return how many stay open.

        What the bridge recorded is read :data:`CHUNK` executions at a time, with a
        lease checkpoint before each part and before the writes: with thousands of sent
        executions on FerretDB these reads took 6-18 s per tick (bench/RESULTS.md). The
        devices' presence and firmware are read only for the executions whose device
        reported success (the health gate, :func:`scheduler.executions.decide`).
        """
        sent = await self.store.tracked(run.job)
        ops, still_open = [], 0
        for start in range(0, len(sent), CHUNK):
            await self._keep(run)
            part = sent[start : start + CHUNK]
            reports = await self.store.reports_of([e.id for e in part])
            views = [ExecutionView.of(e, reports.get(e.id)) for e in part]
            gated = [e.device_id for e, ev in zip(part, views, strict=True) if ev.needs_device]
            devices = await self.store.device_views(gated)
            for e, ev in zip(part, views, strict=True):
                t = decide(run.spec, ev, devices.get(e.device_id), run.now)
                still_open += t is None or not t.final
                if t is not None:
                    ops.append(transition_op(ev, t, run.lease.token, run.now))
                    self.metrics.transitions.labels("retry" if t.retry else t.status.value).inc()
        await self._keep(run)
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
            size = wave_size(run.spec, await self.store.target_count(run.tenant, run.spec.target))
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
        wc = run.counts.wave(p.wave)
        counts = WaveCounts(
            sum(wc.values()), wc.get(S.SUCCEEDED, 0), sum(n for s, n in wc.items() if s.terminal)
        )
        outcome = wave_outcome(run.spec.success, counts, p.wave_started_at, run.now)
        if outcome is WaveOutcome.MISSED and p.accepted_wave >= p.wave:
            outcome = WaveOutcome.MET  # the admin resumed after this wave missed
        run.wave_met = outcome is WaveOutcome.MET
        if outcome is not WaveOutcome.MISSED:
            return None
        share = 100 * counts.succeeded / max(1, counts.total)
        run.progress = p.model_copy(
            update={
                "reason": f"wave {p.wave}: {share:.0f}% succeeded < "
                f"{run.spec.success.min_success_percent:g}%",
                "accepted_wave": p.wave,
            }
        )
        return (
            RolloutStatus.PAUSED
            if run.spec.success.on_miss is MissAction.PAUSE
            else RolloutStatus.ABORTED
        )

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
        p = run.progress
        if (
            p.rate_per_minute
            and p.minute_started_at is not None
            and run.now - p.minute_started_at < MINUTE
        ):
            rate = int(p.rate_per_minute)  # a new rate applies from the next minute on
        else:
            rate = exponential_rate(
                plan,
                await self.store.sent_count(run.job),
                counts.get(S.SUCCEEDED, 0),
                run.spec.max_per_minute,
            )
        _, _, left = minute_budget(
            rate, run.progress.minute_started_at, run.progress.sent_this_minute, run.now
        )
        backlog = len(await self.store.due(run.job, run.now, rate))
        run.progress = run.progress.model_copy(update={"rate_per_minute": float(rate)})
        return max(0, left - backlog)

    async def _start_wave(self, run: _Run, size: int) -> int:
        ids = await self.store.eligible(run.job, run.tenant, run.spec.target, size)
        if not ids:
            return 0
        wave = run.progress.wave + 1
        created = 0
        for start in range(0, len(ids), CHUNK):  # a lease checkpoint before each part
            await self._keep(run)
            part = ids[start : start + CHUNK]
            created += await self.store.create([new_execution(run, d, wave) for d in part])
        run.progress = run.progress.model_copy(update={"wave": wave, "wave_started_at": run.now})
        await self._save(run)
        self.log.info(
            "wave started",
            extra={"job_id": run.job, "wave": wave, "devices": len(ids), "inserted": created},
        )
        return len(ids)

    # -- sending -------------------------------------------------------------------------

    def _cap(self, run: _Run) -> int:
        plan = run.spec.waves
        if isinstance(plan, ExponentialRate) and run.progress.rate_per_minute:
            return min(run.spec.max_per_minute, int(run.progress.rate_per_minute))
        return run.spec.max_per_minute

    def _lifetime(self, run: _Run, until: datetime) -> int:
        """URL lifetime for a command sent now: never past the window's end."""
        return min(self.config.presign_seconds, math.floor((until - run.now).total_seconds()))

    async def _send(self, run: _Run, until: datetime) -> None:
        """Send due executions, batch by batch, while the minute's cap, the window and
        this tick's time budget allow; the rest goes out on the next ticks."""
        if self._lifetime(run, until) < self.config.min_url_seconds:
            return
        await self._firmware(run)  # a rollout without its image stops before any claim
        p = run.progress
        start, sent, left = minute_budget(
            self._cap(run), p.minute_started_at, p.sent_this_minute, run.now
        )
        since = self.clock()
        if left > 0 and await self._next_batch(run, until, since):
            resent = await self._recover(
                run, self._lifetime(run, until), min(left, self.config.batch)
            )
            sent, left = sent + resent, left - resent
        ahead: list[JobExecutionDoc] = []  # due executions read for the next batches
        more = True  # the last read was not short: more may be due
        while left > 0 and (ahead or more) and await self._next_batch(run, until, since):
            if not ahead:
                want = min(left, self.config.batch * READ_AHEAD)
                ahead = await self.store.due(run.job, run.now, want)
                more = len(ahead) == want
                if not ahead:
                    break
            n = min(left, self.config.batch)
            due, ahead = ahead[:n], ahead[n:]
            published = await self._batch(run, due, self._lifetime(run, until))
            sent, left = sent + published, left - published
            if published == 0:  # all offline, claimed elsewhere, or the broker refused
                break
        run.progress = run.progress.model_copy(
            update={"minute_started_at": start, "sent_this_minute": sent}
        )

    async def _next_batch(self, run: _Run, until: datetime, since: datetime) -> bool:
        """Before each batch: the time now, and whether one more batch is started in
        this tick (time budget since sending began, window); if so, a checkpoint."""
        run.now = self.clock()
        if self._lifetime(run, until) < self.config.min_url_seconds:
            return False
        if not self.budget.may_start_batch(since, run.now):
            self.log.info("tick budget spent; the rest next tick", extra={"job_id": run.job})
            return False
        await self._keep(run)
        return True

    async def _firmware(self, run: _Run) -> FirmwareDoc:
        if run.firmware is None:
            doc = await self.store.firmware(run.spec.firmware.id)
            if doc is None or doc.version != run.spec.firmware.version:
                raise RolloutDataError(
                    f"firmware {run.spec.firmware.id} {run.spec.firmware.version} not found"
                )
            if doc.size is None or doc.sha256 is None:
                raise RolloutDataError(f"firmware {run.spec.firmware.id} has no image")
            run.firmware = doc
        return run.firmware

    def _send_doc(self, run: _Run, ex: JobExecutionDoc, send_id: str, stamp: str) -> Document:
        return {
            "_id": send_id,
            "job_id": run.job,
            "execution_id": ex.id,
            "device_id": ex.device_id,
            "attempt": ex.attempt,
            "token": run.lease.token,
            "holder": self.claims.holder,
            "stamp": stamp,
            "intent_at": run.now,
            "published_at": None,
        }

    async def _batch(self, run: _Run, due: list[JobExecutionDoc], lifetime: int) -> int:
        """Claim (insert), mark, publish, confirm one batch; returns how many went out."""
        devices = await self.store.device_views([d.device_id for d in due])
        online = [d for d in due if (v := devices.get(d.device_id)) is not None and v.online]
        await self._postpone([d for d in due if d not in online], run)
        stamp = f"{self.claims.holder}:{run.lease.token}:{secrets.token_hex(6)}"
        await self.store.insert_sends([self._send_doc(run, d, send_id(d), stamp) for d in online])
        mine = {s["execution_id"] for s in await self.store.stamped(stamp)}
        await self._remark([d for d in online if d.id not in mine])
        held = [d for d in online if d.id in mine]
        if not held:
            return 0
        return await self._publish(run, held, [send_id(d) for d in held], lifetime)

    async def _publish(
        self, run: _Run, held: list[JobExecutionDoc], send_ids: list[str], lifetime: int
    ) -> int:
        """Mark sent (before: no report can race yet), publish, then confirm."""
        expires = run.now + timedelta(seconds=lifetime)
        await self.store.mark_sent([d.id for d in held], run.now, expires)
        await self._keep(run)
        messages = await self._commands(run, held, lifetime)
        try:
            await self.sink.publish_all(messages)
        except PublishError as exc:
            self.metrics.errors.labels("publish").inc()
            self.log.warning(
                "publish failed; re-sent after settle", extra={"job_id": run.job, "error": str(exc)}
            )
            return 0
        await self.store.mark_published(send_ids, self.clock())
        self.metrics.commands.inc(len(held))
        return len(held)

    async def _remark(self, lost: list[JobExecutionDoc]) -> None:
        """Due executions whose send claim exists: re-mark those that were published."""
        if not lost:
            return
        sends = await self.store.send_docs([send_id(d) for d in lost])
        for send in sends:
            if send.get("published_at") is not None:
                await self.store.mark_sent([send["execution_id"]], send["published_at"], None)

    async def _recover(self, run: _Run, lifetime: int, limit: int) -> int:
        """Send claims never confirmed (their sender died or failed) after ``settle``."""
        stuck = await self.store.unpublished(run.job, run.now - self.config.settle, limit)
        if not stuck:
            return 0
        ids = [s["execution_id"] for s in stuck]
        execs = await self.store.execution_docs(ids)
        reports = await self.store.reports_of(ids)
        resend = []
        for send in stuck:
            ex = execs.get(send["execution_id"])
            if ex is None or ex.attempt != send["attempt"] or ex.status is not S.QUEUED:
                await self.store.mark_published([send["_id"]], run.now, "obsolete")
            elif ExecutionView.of(ex, reports.get(ex.id)).current_report is not None:
                await self.store.mark_published([send["_id"]], run.now, "device reported")
                await self.store.mark_sent([ex.id], ex.sent_at or run.now, None)
            else:
                resend.append((send, ex))
        return await self._resend(run, resend, lifetime)

    async def _resend(
        self, run: _Run, pairs: list[tuple[Document, JobExecutionDoc]], lifetime: int
    ) -> int:
        """Publish again, same attempt: once per fencing token (``#r<token>`` claim)."""
        if not pairs:
            return 0
        stamp = f"{self.claims.holder}:{run.lease.token}:{secrets.token_hex(6)}"
        await self.store.insert_sends(
            [
                self._send_doc(run, ex, f"{send['_id']}#r{run.lease.token}", stamp)
                for send, ex in pairs
            ]
        )
        mine = {s["execution_id"] for s in await self.store.stamped(stamp)}
        held = [(s, ex) for s, ex in pairs if ex.id in mine]
        if not held:
            return 0
        ids = [s["_id"] for s, _ in held] + [f"{s['_id']}#r{run.lease.token}" for s, _ in held]
        published = await self._publish(run, [ex for _, ex in held], ids, lifetime)
        self.metrics.republished.inc(published)
        self.log.warning(
            "re-sent unconfirmed commands", extra={"job_id": run.job, "count": published}
        )
        return published

    async def _postpone(self, offline: list[JobExecutionDoc], run: _Run) -> None:
        ops = [
            Update(
                {"_id": d.id, "attempt": d.attempt, "sent_at": None},
                {
                    "$set": {"next_try_at": run.now + backoff(d.tries)},
                    "$inc": {"tries": 1},
                },
            )
            for d in offline
        ]
        await self.store.apply(ops)

    async def _commands(
        self, run: _Run, held: list[JobExecutionDoc], lifetime: int
    ) -> list[Outgoing]:
        fw = await self._firmware(run)
        assert fw.size is not None  # checked by _firmware
        assert fw.sha256 is not None
        expires = run.now + timedelta(seconds=lifetime)
        out = []
        for doc in held:
            url = self.presigner.get_url(fw.s3_key, lifetime)
            ref = FirmwareRef(
                version=run.spec.firmware.version,
                size=fw.size,
                sha256=fw.sha256,
                url=url,
                url_expires_at=expires,
                hardware_models=tuple(fw.hardware_models),
                signature=fw.signature,
            )
            command = JobCommand(
                job_id=run.job,
                execution=doc.attempt,
                firmware=ref,
                allow_downgrade=run.spec.allow_downgrade,
                issued_at=run.now,
            )
            out.append(
                Outgoing(topic(Channel.JOB, doc.device_id, run.job), encode(command), lifetime)
            )
        return out


def send_id(execution: JobExecutionDoc) -> str:
    return f"{execution.id}#{execution.attempt}"


def _lease_name(job: str) -> str:
    return f"rollout:{job}"
