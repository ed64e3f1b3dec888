"""How long a tick works on one rollout, and when its lease is renewed meanwhile. Pure.

A lease (:mod:`scheduler.claims`) lets its holder act until ``margin`` before it ends:
``ttl - margin`` is the *usable* time of one lease period (25 s by default). The holder
renews it at the start of each tick (:meth:`Claims.hold`). Until issue 13 that was the
only renewal, so a tick that took longer than the usable time lost the lease mid-tick
and another instance took the rollout over: with 5,000 executions on FerretDB two
instances traded one rollout for minutes and sent one batch in three
(bench/RESULTS.md, finding 5). A slow database must slow a rollout down, not stop it;
two rules do that:

- **Renew on the way.** At each checkpoint of a tick (before each part of the tracking
  reads and before its writes, before each part of a new wave's executions is created,
  before each batch is claimed and before it is published:
  :meth:`RolloutExecutor._keep`) the holder looks at its lease: more than half the
  usable time left, it acts on (:attr:`LeaseStep.KEEP`); less, it renews first
  (:attr:`LeaseStep.RENEW`); within ``margin`` of the end, it is too late to renew
  safely and it stops (:attr:`LeaseStep.STOP`, the test of :meth:`Claims.check`). So
  every step after a checkpoint has at least half a usable period (12.5 s) before the
  holder must stop, and a step slower than that (a batch that would outlive the lease)
  meets ``STOP`` at the next checkpoint, before it publishes: its unpublished claims
  are settled by the next holder as after a crash. Renewal is the holder's update of
  its own lease document (one writer: no compare-and-set); :meth:`Claims.renew` says
  why it stays exclusive.
- **Bounded work.** No new batch is started once :attr:`TickBudget.work` (half the
  usable time, 12.5 s) has passed since the rollout's turn began sending; the rest goes
  out on the next ticks. Renewal alone would keep the lease, but a tick would then run
  until the whole wave is out, while abort criteria, pause and cancel are read once per
  tick, the other rollouts wait for their turn and a graceful stop waits for the
  running tick. The budget counts from the first batch, not from the turn's start, so
  that a turn whose other steps are slow still sends for a while: at 5,000 sent
  executions on FerretDB, tracking them took 10-30 s per tick before it was made
  cheaper, ~10 s after (bench/RESULTS.md, "Rollout executor tick at 5,000 executions").

The functions take ``now`` (the holder's own clock, :mod:`scheduler.clock`) instead of
reading a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = ["LeaseStep", "TickBudget"]


class LeaseStep(StrEnum):
    """What a holder does with its lease at a checkpoint."""

    KEEP = "keep"  # more than half the usable time left: act on
    RENEW = "renew"  # less than half left: extend it, then act
    STOP = "stop"  # within the margin of its end: the lease is as good as lost


@dataclass(frozen=True)
class TickBudget:
    """The timing rules of one lease: its time to live and the holder's safety margin."""

    ttl: timedelta
    margin: timedelta

    def __post_init__(self) -> None:
        if self.margin < timedelta(0) or self.margin >= self.ttl:
            raise ValueError(f"lease margin {self.margin} must be in [0, ttl={self.ttl})")

    @property
    def usable(self) -> timedelta:
        """How long a holder may act on one lease period."""
        return self.ttl - self.margin

    @property
    def work(self) -> timedelta:
        """How long one tick starts new batches for one rollout."""
        return self.usable / 2

    def work_until(self, sending_since: datetime) -> datetime:
        """When a turn that began sending at ``sending_since`` starts no more batches."""
        return sending_since + self.work

    def may_start_batch(self, sending_since: datetime, now: datetime) -> bool:
        """Whether a turn that began sending at ``sending_since`` starts one more batch."""
        return now < self.work_until(sending_since)

    def lease_step(self, expires_at: datetime, now: datetime) -> LeaseStep:
        """Keep, renew or stop, for a lease ending at ``expires_at``."""
        left = expires_at - self.margin - now
        if left <= timedelta(0):
            return LeaseStep.STOP
        if left < self.usable / 2:
            return LeaseStep.RENEW
        return LeaseStep.KEEP
