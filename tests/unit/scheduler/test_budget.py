"""A tick's time budget and when its lease is renewed (pure, with a fake clock)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from scheduler.budget import LeaseStep, TickBudget

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)
DEFAULT = TickBudget(ttl=30 * S, margin=5 * S)  # OUTPOST_SCHEDULER_LEASE_[MARGIN_]SECONDS


@dataclass
class FakeClock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> datetime:
        self.now += by
        return self.now


def test_usable_time_and_work_per_tick():
    assert DEFAULT.usable == 25 * S
    assert DEFAULT.work == 12.5 * S
    assert DEFAULT.work_until(T0) == T0 + 12.5 * S


@pytest.mark.parametrize("margin", [-1 * S, 30 * S, 31 * S])
def test_margin_must_leave_usable_time(margin):
    with pytest.raises(ValueError, match="margin"):
        TickBudget(ttl=30 * S, margin=margin)


def test_lease_is_kept_while_more_than_half_the_usable_time_is_left():
    expires = T0 + 30 * S  # taken or renewed at T0
    assert DEFAULT.lease_step(expires, T0) is LeaseStep.KEEP
    assert DEFAULT.lease_step(expires, T0 + 12.4 * S) is LeaseStep.KEEP
    assert DEFAULT.lease_step(expires, T0 + 12.5 * S) is LeaseStep.KEEP  # exactly half left


def test_lease_is_renewed_with_less_than_half_left_and_before_the_margin():
    expires = T0 + 30 * S
    assert DEFAULT.lease_step(expires, T0 + 12.6 * S) is LeaseStep.RENEW
    assert DEFAULT.lease_step(expires, T0 + 24.9 * S) is LeaseStep.RENEW


def test_lease_within_the_margin_of_its_end_stops_the_holder():
    expires = T0 + 30 * S
    assert DEFAULT.lease_step(expires, T0 + 25 * S) is LeaseStep.STOP  # as Claims.check
    assert DEFAULT.lease_step(expires, T0 + 31 * S) is LeaseStep.STOP
    assert TickBudget(30 * S, timedelta(0)).lease_step(expires, T0 + 30 * S) is LeaseStep.STOP


def test_batches_start_for_half_a_usable_period_from_the_first():
    assert DEFAULT.may_start_batch(T0, T0)
    assert DEFAULT.may_start_batch(T0, T0 + 12 * S)
    assert not DEFAULT.may_start_batch(T0, T0 + 12.5 * S)


@dataclass
class Holder:
    """The executor's use of the budget, replayed on a fake clock: a checkpoint before
    each batch and before each publish; ``None`` for a batch when the lease stopped."""

    budget: TickBudget
    clock: FakeClock
    expires: datetime = T0
    renewals: list[datetime] = field(default_factory=list)

    def checkpoint(self) -> bool:
        step = self.budget.lease_step(self.expires, self.clock())
        if step is LeaseStep.RENEW:
            self.expires = self.clock() + self.budget.ttl
            self.renewals.append(self.clock())
        return step is not LeaseStep.STOP

    def turn(
        self, batch_parts: list[tuple[timedelta, timedelta]], before: timedelta = timedelta(0)
    ) -> int | None:
        """One rollout's turn: ``before`` sending (tracking, a wave), then batches of
        (claim time, publish time); returns how many batches were published, or None if
        the lease stopped mid-turn."""
        self.expires = self.clock() + self.budget.ttl  # renewed by hold() at the turn's start
        self.clock.advance(before)
        since = self.clock()
        done = 0
        for claim, publish in batch_parts:
            if not self.budget.may_start_batch(since, self.clock()):
                break
            if not self.checkpoint():
                return None
            self.clock.advance(claim)
            if not self.checkpoint():
                return None
            self.clock.advance(publish)
            done += 1
        return done


def test_slow_batches_fill_the_budget_and_never_lose_the_lease():
    clock = FakeClock()
    holder = Holder(DEFAULT, clock)
    done = holder.turn([(3 * S, 1 * S)] * 100)  # 4 s per batch: a database slower than finding 5
    assert done == 4  # started at 0, 4, 8 and 12 s; the rest on the next ticks
    assert clock.now - T0 == 16 * S  # a tick ends within the budget plus one batch
    assert holder.renewals == [T0 + 15 * S]  # before the last publish: 15 s of 25 usable used


def test_a_turn_whose_steps_before_sending_took_20_s_still_sends_for_the_budget():
    clock = FakeClock()
    holder = Holder(DEFAULT, clock)
    done = holder.turn([(3 * S, 1 * S)] * 100, before=20 * S)  # tracking 5,000 executions
    assert done == 4  # at 20, 24, 28 and 32 s
    assert holder.renewals == [T0 + 20 * S, T0 + 35 * S]  # 5 s usable left at the first
    assert clock.now - T0 == 36 * S  # longer than the lease, which was never lost


def test_a_single_batch_slower_than_half_a_usable_period_stops_before_it_publishes():
    clock = FakeClock()
    holder = Holder(DEFAULT, clock)
    assert holder.turn([(1 * S, 1 * S), (26 * S, 1 * S)]) is None
    assert clock.now - T0 == 28 * S  # stopped at the checkpoint before the publish


def test_no_lease_is_ever_within_its_margin_at_a_checkpoint_passed():
    """Batches of any duration below half the usable time, ticks back to back: every
    checkpoint passes, and the holder never acts past its lease's usable time."""
    for seconds in (0.5, 3, 7, 12):
        clock = FakeClock()
        holder = Holder(DEFAULT, clock)
        for _ in range(10):  # ten ticks, 5 s apart
            assert holder.turn([(seconds * S / 2, seconds * S / 2)] * 50) is not None
            assert clock() < holder.expires - DEFAULT.margin
            clock.advance(5 * S)
