"""Which WiFi channels an access point may use in a country, from Linux's wireless-regdb.

Source
------
``schemas/data/regulatory.db`` is the regulatory database the Linux kernel loads
(wireless-regdb, maintained by the Linux wireless community from national regulations),
copied unchanged from Debian's ``wireless-regdb`` package :data:`REGDB_VERSION` (file
``/lib/firmware/regulatory.db-upstream``; ISC licence in ``regulatory.db.LICENSE``). A
device running Linux applies the same rules, so a config the backend accepts is one its
kernel and hostapd accept. To refresh it::

    apt-get download wireless-regdb && dpkg-deb -x wireless-regdb_*.deb x
    cp x/lib/firmware/regulatory.db-upstream schemas/data/regulatory.db

then update :data:`REGDB_VERSION` and the digest in ``tests/unit/schemas/test_regulatory.py``.

File format (big-endian; every pointer counts 4-byte units): ``"RGDB"``, version 20,
then the countries (``alpha2``, pointer to a rule collection) up to ``"\\0\\0"``. A
collection: its length, number of rules, DFS region, then (2-byte aligned) the rules'
pointers. A rule: its length, flags, maximum EIRP (mBm), start, end and maximum
bandwidth (kHz).

From rules to channels
----------------------
- A 20 MHz channel (2.4 GHz: centre ``2407 + 5·n`` MHz, 14 at 2484; 5 GHz ``5000 + 5·n``;
  6 GHz ``5950 + 5·n``) is usable when its whole span lies in rules of the country
  (adjacent rules join) and none of them says ``NO-IR`` (no initiating radiation: a
  device may not start a network there, so an access point cannot use it). DFS channels
  are usable (the access point runs DFS).
- A wider channel uses one IEEE block (for example 80 MHz on 36-48); it is usable when
  every 20 MHz channel of the block is, and each rule it touches allows that bandwidth:
  its maximum bandwidth, or, for ``AUTO-BW`` rules, the width of the run of adjacent
  rules it belongs to (as the kernel computes it).
- A country in ISO 3166-1 that the database does not list gets the database's world
  domain ``00``, as a Linux device does: 2.4 GHz channels 1-11 only.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path

__all__ = [
    "REGDB_PATH",
    "REGDB_VERSION",
    "WIDTHS",
    "WORLD",
    "Band",
    "ChannelPlan",
    "Rule",
    "channel_plan",
    "load",
]

REGDB_PATH = Path(__file__).resolve().parent / "data" / "regulatory.db"
REGDB_VERSION = "2026.05.30"
WORLD = "00"

_MAGIC = b"RGDB"
_VERSION = 20
NO_OFDM, NO_OUTDOOR, DFS, NO_IR, AUTO_BW = 1, 2, 4, 8, 16


class Band(StrEnum):
    GHZ_2_4 = "2.4GHz"
    GHZ_5 = "5GHz"
    GHZ_6 = "6GHz"


WIDTHS: dict[Band, tuple[int, ...]] = {
    Band.GHZ_2_4: (20, 40),
    Band.GHZ_5: (20, 40, 80, 160),
    Band.GHZ_6: (20, 40, 80, 160, 320),
}

# 20 MHz channel numbers per band, and their centre frequency (MHz).
_PRIMARIES: dict[Band, tuple[int, ...]] = {
    Band.GHZ_2_4: tuple(range(1, 15)),
    Band.GHZ_5: (*range(36, 65, 4), *range(100, 145, 4), *range(149, 178, 4)),
    Band.GHZ_6: tuple(range(1, 234, 4)),
}


def _centre(band: Band, channel: int) -> int:
    if band is Band.GHZ_2_4:
        return 2484 if channel == 14 else 2407 + 5 * channel
    return (5000 if band is Band.GHZ_5 else 5950) + 5 * channel


# IEEE channel blocks by centre channel: a block spans centre ± half-span, step 4.
_CENTRES: dict[tuple[Band, int], tuple[int, ...]] = {
    (Band.GHZ_5, 40): (38, 46, 54, 62, 102, 110, 118, 126, 134, 142, 151, 159, 167, 175),
    (Band.GHZ_5, 80): (42, 58, 106, 122, 138, 155, 171),
    (Band.GHZ_5, 160): (50, 114, 163),
    (Band.GHZ_6, 40): tuple(range(3, 234, 8)),
    (Band.GHZ_6, 80): tuple(range(7, 234, 16)),
    (Band.GHZ_6, 160): tuple(range(15, 234, 32)),
    (Band.GHZ_6, 320): tuple(range(31, 192, 32)),  # 320-1 and 320-2 channelizations
}
_HALF_SPAN = {40: 2, 80: 6, 160: 14, 320: 30}


def _blocks(band: Band, width: int) -> Iterable[tuple[int, ...]]:
    """The 20 MHz channels of each block of ``width`` on ``band``."""
    if band is Band.GHZ_2_4:  # HT40: primary plus a secondary 4 above (13 blocks, 14 none)
        return ((c, c + 4) for c in range(1, 10))
    half = _HALF_SPAN[width]
    return (tuple(range(c - half, c + half + 1, 4)) for c in _CENTRES.get((band, width), ()))


@dataclass(frozen=True, slots=True)
class Rule:
    """One frequency range of a country's rules (kHz), as the database states it."""

    start_khz: int
    end_khz: int
    max_bw_khz: int
    max_eirp_mbm: int
    flags: int

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)


def load(path: Path = REGDB_PATH) -> dict[str, tuple[Rule, ...]]:
    """Every country's rules (and ``00``, the world domain), read from ``path``."""
    data = path.read_bytes()
    magic, version = struct.unpack_from(">4sI", data, 0)
    if magic != _MAGIC or version != _VERSION:
        raise ValueError(f"{path}: not a version {_VERSION} regulatory.db")
    domains: dict[str, tuple[Rule, ...]] = {}
    offset = 8
    while (alpha2 := data[offset : offset + 2]) != b"\0\0":
        (pointer,) = struct.unpack_from(">H", data, offset + 2)
        domains[alpha2.decode("ascii")] = _collection(data, pointer << 2)
        offset += 4
    return domains


def _collection(data: bytes, at: int) -> tuple[Rule, ...]:
    length, count = data[at], data[at + 1]
    first = at + length + (length % 2)  # rule pointers start 2-byte aligned
    rules = []
    for n in range(count):
        (pointer,) = struct.unpack_from(">H", data, first + 2 * n)
        _, flags, eirp, start, end, bandwidth = struct.unpack_from(">BBHIII", data, pointer << 2)
        rules.append(Rule(start, end, bandwidth, eirp, flags))
    return tuple(sorted(rules, key=lambda r: r.start_khz))


@dataclass(frozen=True, slots=True)
class ChannelPlan:
    """The channels an access point may use in one country, per band and width."""

    country: str
    domain: str  # the database entry used: the country, or ``00`` (world)
    usable: Mapping[tuple[Band, int], frozenset[int]]

    def channels(self, band: Band, width: int = 20) -> frozenset[int]:
        return self.usable.get((band, width), frozenset())


def _runs(rules: tuple[Rule, ...]) -> list[tuple[Rule, ...]]:
    """Rules grouped into runs of adjacent ranges (one ends where the next starts)."""
    runs: list[list[Rule]] = []
    for rule in rules:
        if runs and runs[-1][-1].end_khz == rule.start_khz:
            runs[-1].append(rule)
        else:
            runs.append([rule])
    return [tuple(run) for run in runs]


def _span_ok(runs: list[tuple[Rule, ...]], low_khz: int, high_khz: int, width: int) -> bool:
    """Whether ``low..high`` lies in one run of rules, none NO-IR, each allowing ``width``."""
    for run in runs:
        if not (run[0].start_khz <= low_khz and high_khz <= run[-1].end_khz):
            continue
        run_bw = run[-1].end_khz - run[0].start_khz
        touched = [r for r in run if r.start_khz < high_khz and r.end_khz > low_khz]
        return all(
            not r.has(NO_IR) and (run_bw if r.has(AUTO_BW) else r.max_bw_khz) >= width * 1000
            for r in touched
        )
    return False


def _usable(rules: tuple[Rule, ...], band: Band, width: int) -> frozenset[int]:
    runs = _runs(rules)

    def fits(channels: tuple[int, ...]) -> bool:
        low = (_centre(band, min(channels)) - 10) * 1000
        high = (_centre(band, max(channels)) + 10) * 1000
        return all(
            _span_ok(runs, (_centre(band, c) - 10) * 1000, (_centre(band, c) + 10) * 1000, 20)
            for c in channels
        ) and _span_ok(runs, low, high, width)

    if width == 20:
        return frozenset(c for c in _PRIMARIES[band] if fits((c,)))
    return frozenset(c for block in _blocks(band, width) if fits(block) for c in block)


@cache
def _domains() -> dict[str, tuple[Rule, ...]]:
    return load()


@cache
def channel_plan(country: str) -> ChannelPlan:
    """The plan of ``country`` (ISO 3166-1 alpha-2); the world domain if it is not listed."""
    domains = _domains()
    name = country if country in domains else WORLD
    rules = domains[name]
    usable = {
        (band, width): _usable(rules, band, width)
        for band, widths in WIDTHS.items()
        for width in widths
    }
    return ChannelPlan(country, name, usable)
