"""The ordering rule: (session, seq), the Last Will last in its session, first below the next."""

from __future__ import annotations

import random

import pytest

from schemas.documents import order_key_str
from schemas.protocol import WILL_SEQ, OrderKey


def key(session: int, seq: int) -> OrderKey:
    return OrderKey(session=session, seq=seq)


def test_within_a_session_the_higher_seq_is_newer() -> None:
    assert key(5, 2).newer_than(key(5, 1))
    assert not key(5, 1).newer_than(key(5, 2))


def test_equal_keys_are_not_newer_so_redeliveries_are_dropped() -> None:
    assert not key(5, 3).newer_than(key(5, 3))


def test_a_later_session_beats_any_seq_of_an_earlier_one() -> None:
    assert key(6, 1).newer_than(key(5, 10_000))
    assert not key(5, 10_000).newer_than(key(6, 1))


def test_anything_is_newer_than_nothing() -> None:
    assert key(0, 0).newer_than(None)


def test_will_is_newer_than_every_message_of_its_own_session() -> None:
    will = OrderKey.will(7)
    online = key(7, 1)
    assert will.newer_than(online)
    assert will.newer_than(key(7, WILL_SEQ - 1))
    assert not online.newer_than(will)


def test_will_is_older_than_the_online_message_of_the_next_session() -> None:
    will = OrderKey.will(7)
    next_online = key(8, 1)
    assert next_online.newer_than(will)
    assert not will.newer_than(next_online)


def test_graceful_offline_has_the_same_key_as_the_will() -> None:
    """Published offline + the broker's Will (if both arrive): the second is dropped."""
    assert OrderKey.will(7) == key(7, WILL_SEQ)
    assert not OrderKey.will(7).newer_than(key(7, WILL_SEQ))


def apply_in_order(arrivals: list[tuple[str, OrderKey]]) -> str:
    """What a store keeping only newer keys ends with."""
    stored: tuple[str, OrderKey] | None = None
    for status, k in arrivals:
        if k.newer_than(stored[1] if stored else None):
            stored = (status, k)
    assert stored is not None
    return stored[0]


def test_late_will_of_the_old_session_does_not_hide_the_reconnect() -> None:
    """Session 7 dies, the device reconnects (session 8), then session 7's Will arrives."""
    arrivals = [("online", key(7, 1)), ("online", key(8, 1)), ("offline", OrderKey.will(7))]
    assert apply_in_order(arrivals) == "online"


def test_will_after_online_of_the_same_session_wins() -> None:
    arrivals = [("offline", OrderKey.will(7)), ("online", key(7, 1))]
    assert apply_in_order(arrivals) == "offline"


def test_any_arrival_order_converges() -> None:
    history = [
        ("online", key(1, 1)),
        ("offline", OrderKey.will(1)),
        ("online", key(2, 1)),
        ("offline", OrderKey.will(2)),
        ("online", key(3, 1)),
    ]
    rng = random.Random(1234)
    for _ in range(200):
        shuffled = history[:]
        rng.shuffle(shuffled)
        assert apply_in_order(shuffled) == "online"
        assert apply_in_order(shuffled + shuffled) == "online"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((0, 0), (0, 1)),
        ((1, 255), (1, 256)),
        ((1, WILL_SEQ), (2, 1)),
        ((2**40, 9), (2**40 + 1, 0)),
        ((0, WILL_SEQ - 1), (0, WILL_SEQ)),
    ],
)
def test_stored_key_string_orders_like_the_key(a: tuple[int, int], b: tuple[int, int]) -> None:
    older, newer = key(*a), key(*b)
    assert newer.newer_than(older)
    assert order_key_str(older) < order_key_str(newer)
    assert len(order_key_str(older)) == len(order_key_str(newer))


def test_key_bounds() -> None:
    key(WILL_SEQ, WILL_SEQ)
    with pytest.raises(ValueError, match="less than or equal"):
        key(WILL_SEQ + 1, 0)
    with pytest.raises(ValueError, match="greater than or equal"):
        key(0, -1)
