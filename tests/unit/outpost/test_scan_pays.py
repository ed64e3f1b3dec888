"""When FerretDB reads ids faster by one read of the whole collection."""

from __future__ import annotations

from outpost.store import SCAN_FROM, SCAN_SHARE, scan_pays


def test_a_tenth_of_the_collection_or_more_is_read_whole_a_few_ids_never() -> None:
    assert scan_pays(2_000, 20_000)
    assert not scan_pays(1_999, 20_000)
    assert not scan_pays(SCAN_FROM - 1, SCAN_FROM)  # a few ids: one by one, however small
    assert scan_pays(SCAN_FROM, SCAN_FROM * SCAN_SHARE)
