"""When FerretDB reads ids faster by one read of the whole collection, and how many
documents a write-lock round takes."""

from __future__ import annotations

from outpost.store import (
    LOCK_ROUND,
    LOCK_ROUND_RANGE,
    LOCK_ROUND_S,
    LOCK_TTL_S,
    SCAN_FROM,
    SCAN_SHARE,
    lock_round,
    scan_pays,
)


def test_a_tenth_of_the_collection_or_more_is_read_whole_a_few_ids_never() -> None:
    assert scan_pays(2_000, 20_000)
    assert not scan_pays(1_999, 20_000)
    assert not scan_pays(SCAN_FROM - 1, SCAN_FROM)  # a few ids: one by one, however small
    assert scan_pays(SCAN_FROM, SCAN_FROM * SCAN_SHARE)


def test_a_lock_round_lasts_a_third_of_the_lock_ttl_at_the_last_pace_within_bounds() -> None:
    low, high = LOCK_ROUND_RANGE
    assert lock_round(None) == LOCK_ROUND  # no round measured yet
    assert LOCK_ROUND_S * 3 == LOCK_TTL_S
    assert lock_round(1_000.0) == int(1_000 * LOCK_ROUND_S)
    assert lock_round(10.0) == low  # a slow database: small rounds, never empty ones
    assert lock_round(1e6) == high  # a fast one: bounded memory and waits for others
