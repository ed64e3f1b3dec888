"""The channel rules come from Linux's wireless-regdb, read as the kernel reads it."""

from __future__ import annotations

import hashlib

from schemas.regulatory import (
    DFS,
    NO_IR,
    REGDB_PATH,
    WORLD,
    Band,
    channel_plan,
    load,
)
from schemas.wifi import ISO_COUNTRIES

# Debian wireless-regdb 2026.05.30-1~deb12u1, /lib/firmware/regulatory.db-upstream
REGDB_SHA256 = "2fb33ca0074db573e05ef7dd50bb45b63c0ff98b7e852e1105ebad536fae8e6b"


def test_the_shipped_database_is_the_documented_upstream_file() -> None:
    assert hashlib.sha256(REGDB_PATH.read_bytes()).hexdigest() == REGDB_SHA256


def test_every_listed_domain_is_iso_3166_or_the_world_domain() -> None:
    domains = load()
    assert WORLD in domains
    # AN (Netherlands Antilles) left ISO 3166-1 in 2010; the database still lists it
    assert set(domains) - {WORLD, "AN"} <= set(ISO_COUNTRIES)
    assert len(domains) > 150


def test_rules_are_read_as_stated_in_the_database() -> None:
    de = load()["DE"]
    assert (de[0].start_khz, de[0].end_khz, de[0].max_bw_khz) == (2_400_000, 2_483_500, 40_000)
    # 5250-5350 MHz needs DFS in Europe
    assert any(r.start_khz == 5_250_000 and r.has(DFS) for r in de)
    # the world domain lets a device listen but not start a network on 12-13
    assert any(r.has(NO_IR) for r in load()[WORLD])


def test_a_country_missing_from_the_database_gets_the_world_domain() -> None:
    plan = channel_plan("AQ")
    assert plan.domain == WORLD
    assert plan.channels(Band.GHZ_2_4) == frozenset(range(1, 12))
    assert plan.channels(Band.GHZ_5) == frozenset()


def test_no_ir_ranges_are_closed_to_access_points() -> None:
    assert channel_plan("US").channels(Band.GHZ_6) == frozenset()
    assert 169 not in channel_plan("US").channels(Band.GHZ_5)  # 5850-5895 MHz: NO-IR
    assert channel_plan("JP").channels(Band.GHZ_2_4) == frozenset(range(1, 15))
