"""Benchmark: what the store's per-document write locks cost on FerretDB.

On FerretDB the store locks the documents it writes across processes, by bucket (a
unique insert into ``write_locks`` per bucket a round of writes touches, deleted after
their writes: outpost/store.py), so that two bridge instances never write one document
at once. This measures the same conditional updates (``_id`` and ``seq`` ``$lt``, as the
bridge sends) through :meth:`Store.apply` with and without the locks, alternating, in one
run on one FerretDB on PostgreSQL (deploy.local, free port, temp dir), for each bucket
count asked (65536: about one lock per document, as a per-document lock would cost).

    PYTHONPATH=. .venv/bin/python bench/store_locks.py --docs 20000 --updates 1500 \
        --buckets 64 65536 --json bench/results/store-locks.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pymongo import AsyncMongoClient  # noqa: E402

import outpost.store as store_module  # noqa: E402
from deploy.local import database_server, free_port  # noqa: E402
from outpost.store import Applied, Insert, Store, Update, Write  # noqa: E402


class Unlocked(Store):
    """The store as it was before the locks: FerretDB's writes go out unlocked."""

    async def _singles(self, coll: Any, writes: Sequence[Write], *, locked: bool = False) -> Any:
        return await super()._singles(coll, writes, locked=False)


async def timed(store: Store, writes: list[Write]) -> tuple[float, Applied]:
    started = time.monotonic()
    applied = await store.apply("docs", writes)
    return time.monotonic() - started, applied


async def measure(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    db = client["store_locks"]
    ids = [f"d{i:06}" for i in range(args.docs)]
    await Store(db).apply("docs", [Insert({"_id": i, "seq": 0}) for i in ids])
    locked, unlocked = Store(db), Unlocked(db)
    seq = 0
    runs: list[dict[str, Any]] = []
    for buckets in args.buckets:
        store_module.LOCK_BUCKETS = buckets
        rates: dict[str, list[float]] = {"locked": [], "unlocked": []}
        for _ in range(args.rounds):
            for mode, store in (("unlocked", unlocked), ("locked", locked)):
                seq += 1
                writes: list[Write] = [
                    Update({"_id": i, "seq": {"$lt": seq}}, {"$set": {"seq": seq}})
                    for i in ids[: args.updates]
                ]
                took, applied = await timed(store, writes)
                assert applied.modified == args.updates, applied
                rates[mode].append(args.updates / took)
                print(f"{buckets} buckets, {mode}: {args.updates / took:.0f}/s", flush=True)
        ratio = statistics.median(rates["locked"]) / statistics.median(rates["unlocked"])
        runs.append(
            {
                "docs": args.docs,
                "updates": args.updates,
                "lock_buckets": buckets,
                "locked_per_s": round(statistics.median(rates["locked"]), 1),
                "unlocked_per_s": round(statistics.median(rates["unlocked"]), 1),
                "ratio": round(ratio, 3),
                "rounds": args.rounds,
            }
        )
    assert await db[store_module.WRITE_LOCKS].count_documents({}) == 0
    await client.close()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--updates", type=int, default=1_500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--buckets", type=int, nargs="+", default=[64, 65536])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="outpost-store-locks-"))
    server = database_server(root / "db", free_port(), durable=False)
    server.start()
    try:
        runs = asyncio.run(measure(server.url, args))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    machine = f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}"
    machine += f", load {load}"
    stamp = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine}
    runs = [{**run, **stamp} for run in runs]
    print(json.dumps(runs, indent=2))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
