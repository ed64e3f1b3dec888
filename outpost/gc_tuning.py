"""The cyclic garbage collector's pace for a long-running service.

CPython starts a collection every 700 net allocations of container objects and, every
tenth and hundredth time, re-scans the older objects too. A bridge batch allocates
tens of thousands of short-lived containers (decoded messages, update documents) next
to large long-lived caches (:class:`bridge.mongo_sink.StoredKeys`), so the collector
re-scanned those caches again and again: decoding and planning 20,000 state messages
next to 100,000 cached documents took 95 to 121 µs a message at the default pace, 75 to
96 µs at this module's and 69 to 83 µs with the collector off (``bench/gc_pace.py``,
three interpreters each, 2026-11-30). A higher first threshold keeps the collector
(reference cycles are still freed, just less often) at the cost of a few more megabytes
of garbage awaiting collection.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_gc"]

YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect less often, and leave what exists at start-up (modules, settings) out
    of every later collection (:func:`gc.freeze`)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    gc.freeze()
