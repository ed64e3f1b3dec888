"""Claims and leases between two scheduler instances against the real database."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from scheduler.claims import Claims
from scheduler.errors import LeaseLost

pytestmark = pytest.mark.integration

LOG = logging.getLogger("test.claims")


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_each_firing_is_claimed_by_exactly_one_instance(db):
    clock = FakeClock()
    a = Claims(db, "a", clock, LOG)
    b = Claims(db, "b", clock, LOG)
    firings = [clock.now + timedelta(minutes=i) for i in range(10)]
    results = await asyncio.gather(
        *(c.claim_firing("reconcile", t) for t in firings for c in (a, b))
    )
    pairs = list(zip(results[::2], results[1::2], strict=True))
    assert all(x != y for x, y in pairs)  # exactly one of each pair won
    assert await db["scheduler_claims"].count_documents({}) == 10


async def test_lease_is_exclusive_and_taken_over_after_expiry_with_a_new_token(db):
    clock = FakeClock()
    a = Claims(db, "a", clock, LOG)
    b = Claims(db, "b", clock, LOG)
    ttl = timedelta(seconds=10)
    lease_a = await a.acquire("rollout:r1", ttl)
    assert lease_a is not None
    assert await b.acquire("rollout:r1", ttl) is None
    clock.now += timedelta(seconds=5)
    lease_a = await a.renew(lease_a, ttl)  # now valid until +15 s
    clock.now += timedelta(seconds=9)
    assert await b.acquire("rollout:r1", ttl) is None
    clock.now += timedelta(seconds=1)  # a died: expired
    lease_b = await b.acquire("rollout:r1", ttl)
    assert lease_b is not None
    assert lease_b.token == lease_a.token + 1
    with pytest.raises(LeaseLost):
        await a.renew(lease_a, ttl)
    assert await a.hold("rollout:r1", ttl, lease_a) is None


async def test_concurrent_acquire_has_one_winner(db):
    clock = FakeClock()
    instances = [Claims(db, f"i{n}", clock, LOG) for n in range(4)]
    leases = await asyncio.gather(
        *(c.acquire("rollout:race", timedelta(seconds=30)) for c in instances)
    )
    assert sum(lease is not None for lease in leases) == 1


async def test_release_lets_another_instance_take_over_at_once(db):
    clock = FakeClock()
    a = Claims(db, "a", clock, LOG)
    b = Claims(db, "b", clock, LOG)
    lease_a = await a.acquire("x", timedelta(minutes=5))
    assert lease_a is not None
    await a.release(lease_a)
    lease_b = await b.acquire("x", timedelta(minutes=5))
    assert lease_b is not None
    assert lease_b.token == 2


async def test_racing_takeovers_of_an_expired_lease_have_one_winner_each_time(db):
    clock = FakeClock()
    instances = [Claims(db, f"i{n}", clock, LOG) for n in range(4)]
    ttl = timedelta(seconds=10)
    tokens = []
    for _ in range(10):
        leases = await asyncio.gather(*(c.acquire("rollout:busy", ttl) for c in instances))
        winners = [lease for lease in leases if lease is not None]
        assert len(winners) == 1
        tokens.append(winners[0].token)
        clock.now += ttl  # the winner dies: its lease expires
    assert tokens == list(range(1, 11))
