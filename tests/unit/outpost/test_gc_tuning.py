from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from outpost.gc_tuning import YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_tuning_collects_less_often_and_freezes_what_exists(restored_gc: None) -> None:
    _, older, oldest = gc.get_threshold()
    kept = [object() for _ in range(3)]  # noqa: F841 - alive at the freeze
    tune_gc()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, older, oldest)
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()  # cycles are still collected
