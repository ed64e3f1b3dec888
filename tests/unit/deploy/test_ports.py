"""``free_port`` hands out a range's free ports in turn once ``use_port_range`` set it."""

from __future__ import annotations

import socket

import pytest

from deploy.local import process
from deploy.local.process import free_port, use_port_range


@pytest.fixture
def own_range(monkeypatch: pytest.MonkeyPatch) -> None:
    # the range this worker uses (tests/conftest.py) comes back after the test
    monkeypatch.setattr(process, "_ports", process._ports)
    monkeypatch.setattr(process, "_ports_size", process._ports_size)


@pytest.mark.usefixtures("own_range")
def test_ports_come_from_the_range_each_once_per_turn_and_busy_ones_skipped() -> None:
    use_port_range(29_990, 29_999)
    first = [free_port() for _ in range(10)]
    assert sorted(first) == list(range(29_990, 30_000))  # all of them before any again
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first[0]))
        busy.listen()
        second = [free_port() for _ in range(9)]
    assert first[0] not in second
    assert set(second) == set(first) - {first[0]}
