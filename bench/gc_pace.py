"""Benchmark: the bridge's decoding and planning per message at each garbage-collector pace.

Decodes 20,000 state messages and builds their conditional updates (the bridge's
``decode`` and ``update_op``), five times, next to 100,000 cached documents shaped like
:class:`bridge.mongo_sink.StoredKeys` views, each pace in a fresh interpreter:
CPython's default, :func:`outpost.gc_tuning.tune_gc` (what the bridge runs with), and
the collector off (the floor).

    PYTHONPATH=. .venv/bin/python bench/gc_pace.py
"""

from __future__ import annotations

import gc
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

PACES = ("default", "tuned", "off")
MESSAGES = 20_000
CACHED = 100_000


def one(pace: str) -> float:
    """Microseconds a message, in this interpreter, at ``pace``."""
    from bridge.batch import update_op
    from bridge.decode import decode
    from bridge.inbound import Inbound
    from outpost.gc_tuning import tune_gc
    from tests.integration.bridge.helpers import state_payload

    if pace == "tuned":
        tune_gc()  # at start, as the bridge: the caches fill afterwards, unfrozen
    now = datetime.now(UTC)
    cache = {
        ("device_status", f"dev-{i:06}"): {
            "_id": f"dev-{i:06}",
            "state": {"k": f"{i:036}", "h": f"{i:024}", "updated_at": now},
        }
        for i in range(CACHED)
    }
    if pace == "off":
        gc.disable()
    inbound = [
        Inbound(
            f"devices/dev-{i:06}/state",
            state_payload(f"dev-{i:06}", 3, 1, n=301),
            i % 65535 + 1,
            1,
            False,
            1,
            now,
            time.monotonic(),
        )
        for i in range(MESSAGES)
    ]
    refresh_before = now - timedelta(minutes=5)
    started = time.perf_counter()
    for _ in range(5):
        updates = [update_op(d, refresh_before) for d in map(decode, inbound)]  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    assert len(updates) == MESSAGES
    assert len(cache) == CACHED
    return elapsed / 5 / MESSAGES * 1e6


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--pace":
        print(f"{one(sys.argv[2]):.1f}")
        return
    print(f"# {platform.node()}: {platform.platform()}, Python {platform.python_version()}")
    for pace in PACES:
        runs = [
            float(
                subprocess.run(
                    [sys.executable, __file__, "--pace", pace],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            for _ in range(3)
        ]
        each = ", ".join(f"{r:.1f}" for r in runs)
        print(f"{pace:8} {min(runs):6.1f} µs a message (best of 3: {each})")


if __name__ == "__main__":
    main()
