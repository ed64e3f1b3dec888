"""A rollout whose ticks have more work than one lease period allows (finding 5).

bench/RESULTS.md, finding 5: with 5,000 devices on FerretDB a tick outlasted the lease,
the holder lost it mid-tick, two instances traded the rollout and it stopped moving.
Here the database is made slower than the lease on purpose (creating the wave takes
``CREATE_DELAY`` longer, each batch's claim insert ``DELAY``: at least 8.5 s of work in
the first tick, for a lease of 8 s that its holder may use for 6), two instances tick
side by side as two ``outpost scheduler`` processes would, and the rollout must complete
as if the database were fast: one command per device, one lease token, no lease lost.
On main before the fix this test failed: the first tick lost its lease mid-tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import pytest

from outpost.store import Document, Store
from scheduler.executor import ExecutorConfig, RolloutExecutor
from scheduler.store import RolloutStore
from schemas.documents import JobExecutionDoc
from tests.integration.scheduler.conftest import executor, rollout_doc, seed_firmware, status_of
from tests.integration.scheduler.devices import online_fleet, until

pytestmark = pytest.mark.integration

N = 40
CREATE_DELAY = 3.5  # seconds: the wave's 40 executions
DELAY = 0.5  # seconds per batch of 4 (10 batches)
CONFIG = ExecutorConfig(  # usable: 6 s; a tick starts batches for 3 s (scheduler.budget)
    lease_ttl=timedelta(seconds=8),
    lease_margin=timedelta(seconds=2),
    batch=4,
    presign_seconds=120,
    min_url_seconds=5,
)


class SlowStore(RolloutStore):
    """The real store, slower: creating executions and inserting send claims."""

    async def create(self, docs: Sequence[JobExecutionDoc]) -> int:
        await asyncio.sleep(CREATE_DELAY)
        return await super().create(docs)

    async def insert_sends(self, docs: Sequence[Document]) -> None:
        await asyncio.sleep(DELAY)
        await super().insert_sends(docs)


@contextlib.asynccontextmanager
async def ticking(executors: Sequence[RolloutExecutor]) -> AsyncIterator[None]:
    """Each executor ticks on its own, as the periodic job of its instance would."""

    async def loop(ex: RolloutExecutor) -> None:
        while True:
            await ex.tick()
            await asyncio.sleep(0.05)  # pacing between ticks, not a wait for a delivery

    tasks = [asyncio.create_task(loop(ex), name=f"tick {i}") for i, ex in enumerate(executors)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_ticks_longer_than_the_lease_renew_it_and_the_rollout_completes_once(
    db, broker, mongo, s3, unique, prefix, caplog
):
    caplog.set_level(logging.INFO, logger="test.scheduler")
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    await db["rollouts"].insert_one(rollout_doc(job, fw, waves={"kind": "fixed", "size": N}))

    async def completed() -> bool:
        return await status_of(db, job) == "completed"

    async with (
        online_fleet(db, broker, mongo, s3, unique, N, prefix=prefix) as rig,
        executor(db, broker, s3, holder="s1", config=CONFIG) as first,
        executor(db, broker, s3, holder="s2", config=CONFIG) as second,
    ):
        for ex in (first, second):
            ex.store = SlowStore(Store(db))
        await first.tick()  # s1 takes the lease, creates the wave, sends a first part
        assert 0 < await _sent(db, job) < N
        async with ticking([first, second]):
            await until(completed, 180, "rollout completed")
        await rig.commands.flush()
        commands = rig.commands.commands

    lost = [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]
    assert lost == []
    claims = await db["scheduler_claims"].find({"lease": f"rollout:{job}"}).to_list(None)
    assert [(c["token"], c["holder"]) for c in claims] == [(1, "s1")]  # never taken over
    assert first.metrics.claims.labels("rollout", "renewed")._value.get() > 0
    budget_spent = [r for r in caplog.records if r.getMessage().startswith("tick budget spent")]
    assert budget_spent  # the time bound cut some ticks short, too
    assert {d: [c.execution for c in commands[d]] for d in rig.ids} == {d: [1] for d in rig.ids}
    sends = await db["scheduler_sends"].find({"job_id": job}).to_list(None)
    assert len(sends) == N
    assert {s["token"] for s in sends} == {1}
    assert all(s["published_at"] is not None for s in sends)
    execs = await db["job_executions"].find({"job_id": job}).to_list(None)
    assert Counter(e["status"] for e in execs) == {"succeeded": N}


async def _sent(db, job: str) -> int:
    return await db["job_executions"].count_documents({"job_id": job, "sent_at": {"$ne": None}})
