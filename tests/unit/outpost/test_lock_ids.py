"""The store's write locks name a document's bucket the same way in every process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

from outpost.store import LOCK_BUCKETS, lock_id


def test_a_key_has_the_same_lock_in_another_process_with_another_hash_seed() -> None:
    keys = ["dev-000001", "p0-004999", "ünïcode", 42]
    ours = [lock_id("device_presence", k) for k in keys]
    code = (
        "from outpost.store import lock_id; "
        "print([lock_id('device_presence', k) for k in ['dev-000001', 'p0-004999', 'ünïcode', 42]])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    theirs = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert theirs == repr(ours)


def test_locks_are_per_collection_and_spread_over_the_buckets() -> None:
    assert lock_id("device_presence", "d1") != lock_id("device_status", "d1")
    spread = Counter(lock_id("c", f"dev-{i:06}") for i in range(20_000))
    assert len(spread) == LOCK_BUCKETS
    assert max(spread.values()) < 2 * 20_000 / LOCK_BUCKETS
