"""Benchmark: where a rollout executor tick's time goes, at N executions on FerretDB.

bench/RESULTS.md, finding 5: at 5,000 devices a tick outlasted the scheduler's lease.
This starts FerretDB on PostgreSQL (deploy.local, free port, temp dir), seeds N devices
recorded online, a firmware and one rollout of one wave of N, and runs the real
executor (real store, real claims and lease) with commands going to a sink that only
counts them and URLs signed locally (no broker, no S3: their cost is measured in
bench/scheduler_publish.py). Every call of the store and of the claims is timed; per
tick it prints the tick's time, how many commands went out, and the calls that took the
time. After the wave is out it runs ``--after`` more ticks, i.e. with N sent executions
to track on every tick (no device answers: the reports are absent, the statuses read).

    PYTHONPATH=. .venv/bin/python bench/executor_tick.py --devices 5000 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import secrets
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from deploy.local import MongoServer, free_port  # noqa: E402
from outpost.store import Insert, Store  # noqa: E402
from scheduler.claims import Claims  # noqa: E402
from scheduler.executor import ExecutorConfig, RolloutExecutor  # noqa: E402
from scheduler.metrics import SchedulerMetrics  # noqa: E402
from scheduler.publisher import CommandSink, Outgoing, Presigner  # noqa: E402
from scheduler.store import RolloutStore  # noqa: E402
from schemas.documents import (  # noqa: E402
    DEVICE_PRESENCE,
    DEVICE_STATUS,
    DEVICES,
    FIRMWARE,
    ROLLOUTS,
    RolloutDoc,
)
from schemas.rollouts import RolloutControl, RolloutSpec  # noqa: E402

JOB = "bench-job"


class CountingSink(CommandSink):
    def __init__(self) -> None:
        self.sent = 0

    async def publish_all(self, messages: Sequence[Outgoing]) -> None:
        self.sent += len(messages)


class Timed:
    """Proxy timing every coroutine method of ``inner`` into ``stats[name]``."""

    def __init__(self, inner: Any, stats: dict[str, list[float]], prefix: str) -> None:
        self._inner = inner
        self._stats = stats
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            finally:
                entry = self._stats[f"{self._prefix}.{name}"]
                entry[0] += 1
                entry[1] += time.perf_counter() - start

        return timed


async def seed(db: Store, n: int) -> None:
    now = datetime.now(UTC)
    ids = [f"bench-{i:06d}" for i in range(n)]
    devices = [
        {"_id": d, "tenant_id": "t", "group": "g", "hardware_model": "hw", "created_at": now}
        for d in ids
    ]
    online = {"status": "online", "since": now, "k": "0"}
    presences = [{"_id": d, "tenant_id": "t", "presence": online} for d in ids]
    status = [{"_id": d, "tenant_id": "t", "state": {"firmware": "1.0.0"}} for d in ids]
    await db.apply(DEVICES, [Insert(d) for d in devices])
    await db.apply(DEVICE_PRESENCE, [Insert(p) for p in presences])
    await db.apply(DEVICE_STATUS, [Insert(s) for s in status])
    await db[FIRMWARE].insert_one(
        {
            "_id": "fw",
            "tenant_id": "t",
            "version": "2.0.0",
            "size": 65_536,
            "sha256": "ab" * 32,
            "s3_key": "fw/bench/image.bin",
            "hardware_models": ["hw"],
            "status": "ready",
            "created_at": now,
        }
    )
    spec = RolloutSpec.model_validate(
        {
            "firmware": {"id": "fw", "version": "2.0.0"},
            "target": {"group": "g"},
            "waves": {"kind": "fixed", "size": n},
            "max_per_minute": 100_000,
        }
    )
    rollout = RolloutDoc(
        id=JOB,
        tenant_id="t",
        spec=spec,
        created_at=now,
        control=RolloutControl(status="running", rev="r0"),
    )
    await db[ROLLOUTS].insert_one(rollout.to_mongo())


def presigner() -> Presigner:
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",  # never contacted: signing is local
        aws_access_key_id="bench",
        aws_secret_access_key=secrets.token_hex(16),
        region_name="us-east-1",
    )
    return Presigner(client, "bench")


async def ticks(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    mc: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    db = Store(mc[f"bench_{secrets.token_hex(3)}"])
    start = time.perf_counter()
    await seed(db, args.devices)
    print(f"seeded {args.devices} devices in {time.perf_counter() - start:.1f} s", flush=True)
    stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    log = logging.getLogger("bench.executor")
    sink = CountingSink()
    config = ExecutorConfig(
        lease_ttl=timedelta(seconds=args.lease),
        lease_margin=timedelta(seconds=args.margin),
        batch=args.batch,
    )
    clock = lambda: datetime.now(UTC)  # noqa: E731
    ex = RolloutExecutor(
        Timed(RolloutStore(db), stats, "store"),  # type: ignore[arg-type]
        Timed(Claims(db, "bench", clock, log), stats, "claims"),  # type: ignore[arg-type]
        sink,
        presigner(),
        SchedulerMetrics(),
        clock,
        log,
        config,
    )
    rows: list[dict[str, Any]] = []
    after = 0
    begun = time.perf_counter()
    for number in range(1, args.max_ticks + 1):
        stats.clear()
        before = sink.sent
        start = time.perf_counter()
        await ex.tick()
        elapsed = time.perf_counter() - start
        # as the service's interval job: the next firing, or at once if the tick overran
        await asyncio.sleep(max(0.0, args.interval - elapsed))
        calls = {k: {"calls": int(v[0]), "s": round(v[1], 3)} for k, v in stats.items()}
        rows.append({"tick": number, "s": round(elapsed, 2), "sent": sink.sent - before})
        rows[-1]["at"] = round(start - begun, 1)  # when the tick began
        rows[-1]["calls"] = calls
        top = sorted(stats.items(), key=lambda kv: -kv[1][1])[:6]
        shown = ", ".join(f"{k} {v[1]:.2f}s/{int(v[0])}" for k, v in top)
        print(
            f"tick {number} (+{rows[-1]['at']:.0f} s): {elapsed:.2f} s, "
            f"sent {sink.sent - before} ({sink.sent}); {shown}",
            flush=True,
        )
        if sink.sent >= args.devices:
            after += 1
            if after > args.after:
                break
    await mc.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--margin", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=5.0, help="tick period (s)")
    parser.add_argument("--max-ticks", type=int, default=200)
    parser.add_argument("--after", type=int, default=2, help="ticks after the wave is out")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    root = Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    root.chmod(0o755)
    mongo = MongoServer(root / "mongodb", free_port(), durable=False)
    mongo.start()
    try:
        rows = asyncio.run(ticks(mongo.url, args))
    finally:
        mongo.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        settings = vars(args) | {"json": str(args.json)}
        args.json.write_text(json.dumps({"args": settings, "ticks": rows}, indent=1))


if __name__ == "__main__":
    main()
