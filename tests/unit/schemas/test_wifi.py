"""WiFi config validation: what real access points accept, with precise errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from schemas.wifi import (
    Band,
    InvalidConfig,
    WifiConfig,
    allowed_channels,
    validate_config,
)

PSK = {"mode": "wpa2-psk", "passphrase": "correct horse"}
SAE = {"mode": "wpa3-sae", "passphrase": "correct horse"}


def base(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "country": "US",
        "radios": {"2.4GHz": {"channel": 6}, "5GHz": {"channel": 36, "width": 80}},
        "ssids": [{"name": "Office", "security": copy.deepcopy(PSK), "bands": ["2.4GHz", "5GHz"]}],
    }
    config.update(changes)
    return config


def ssid(
    name: str = "Guest",
    security: dict[str, Any] | None = None,
    bands: list[str] | None = None,
    **more: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "security": security or {"mode": "open"},
        "bands": bands or ["5GHz"],
        **more,
    }


def issues(data: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidConfig) as info:
        validate_config(data)
    return [str(i) for i in info.value.issues]


def with_passphrase(passphrase: str, mode: str = "wpa2-psk") -> dict[str, Any]:
    return base(ssids=[ssid(security={"mode": mode, "passphrase": passphrase})])


def test_minimal_and_full_configs_are_accepted() -> None:
    config = validate_config(base())
    assert config.radios[Band.GHZ_5].width == 80
    assert config.ssids[0].hidden is False
    validate_config({"country": "JP", "radios": {"2.4GHz": {}}})


# --------------------------------------------------------------------------------- SSID


def test_ssid_of_32_bytes_is_accepted() -> None:
    validate_config(base(ssids=[ssid("x" * 32)]))
    validate_config(base(ssids=[ssid("é" * 16)]))  # 16 characters, 32 bytes


@pytest.mark.parametrize(
    "name", ["x" * 33, "é" * 16 + "x", "Café-" + "ü" * 13 + "!", "📶" * 8 + "x"]
)
def test_ssid_of_33_bytes_is_rejected(name: str) -> None:
    assert len(name.encode()) == 33
    assert len(name) < 33 or name.isascii()
    assert issues(base(ssids=[ssid(name)])) == [
        "ssids.0.name: SSID must be 1-32 bytes in UTF-8, got 33 bytes"
    ]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "SSID must be 1-32 bytes in UTF-8, got 0 bytes"),
        ("tab\there", "SSID must not contain control characters"),
        ("nul\x00", "SSID must not contain control characters"),
        ("\ud800", "SSID is not valid Unicode text"),
    ],
)
def test_bad_ssid_names(name: str, message: str) -> None:
    assert issues(base(ssids=[ssid(name)])) == [f"ssids.0.name: {message}"]


def test_duplicate_ssid_on_the_same_band_is_rejected() -> None:
    data = base(ssids=[ssid("Guest", bands=["2.4GHz", "5GHz"]), ssid("Guest", bands=["5GHz"])])
    assert issues(data) == ["ssids.1.name: SSID 'Guest' is already offered on 5GHz by ssids.0"]


def test_same_ssid_on_disjoint_bands_is_allowed() -> None:
    """The usual split: WPA2 on 2.4/5 GHz and WPA3-only on 6 GHz under one name."""
    radios = {"2.4GHz": {}, "5GHz": {}, "6GHz": {"channel": 5}}
    validate_config(
        base(
            country="BR",  # US: 6 GHz is NO-IR in wireless-regdb
            radios=radios,
            ssids=[ssid("Home", PSK, ["2.4GHz", "5GHz"]), ssid("Home", SAE, ["6GHz"])],
        )
    )


def test_ssid_on_a_band_without_radio() -> None:
    data = base(ssids=[ssid("Guest", bands=["5GHz", "6GHz"], security=SAE)])
    assert issues(data) == [
        "ssids.0.bands: SSID 'Guest' is offered on 6GHz but no 6GHz radio is configured"
    ]


def test_ssid_bands_must_not_repeat_and_are_not_empty() -> None:
    assert issues(base(ssids=[ssid(bands=["5GHz", "5GHz"])])) == [
        "ssids.0.bands: bands must not repeat"
    ]
    data = base(ssids=[{**ssid(), "bands": []}])
    assert issues(data) == [
        "ssids.0.bands: Tuple should have at least 1 item after validation, not 0"
    ]


@pytest.mark.parametrize("vlan", [0, 4095, "ten"])
def test_ssid_vlan_range(vlan: Any) -> None:
    assert issues(base(ssids=[ssid(vlan=vlan)]))[0].startswith("ssids.0.vlan: ")
    validate_config(base(ssids=[ssid(vlan=1)], management_vlan=4094))


# --------------------------------------------------------------------------- passphrases


@pytest.mark.parametrize(
    "passphrase",
    [
        "12345678",
        "p" * 63,
        " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "0123456789abcdef" * 4,
        "0123456789ABCDEF" * 4,
    ],
)
def test_valid_wpa2_passphrases(passphrase: str) -> None:
    validate_config(with_passphrase(passphrase))


@pytest.mark.parametrize(
    ("passphrase", "message"),
    [
        ("1234567", "passphrase must be 8-63 characters or 64 hex digits, got 7 characters"),
        ("g" * 64, "a 64-character passphrase must be a raw PSK of 64 hex digits"),
        (
            "0123456789abcdef" * 4 + "0",
            "passphrase must be 8-63 characters or 64 hex digits, got 65 characters",
        ),
        ("pässphrase", "passphrase must be printable ASCII (space to ~)"),
        ("tab\tpassphrase", "passphrase must be printable ASCII (space to ~)"),
    ],
)
def test_invalid_wpa2_passphrases(passphrase: str, message: str) -> None:
    assert issues(with_passphrase(passphrase)) == [
        f"ssids.0.security.wpa2-psk.passphrase: {message}"
    ]


def test_wpa3_sae_takes_no_raw_psk() -> None:
    validate_config(with_passphrase("p" * 63, "wpa3-sae"))
    assert issues(with_passphrase("ab" * 32, "wpa3-sae")) == [
        "ssids.0.security.wpa3-sae.passphrase: WPA3-SAE has no raw-PSK form: use an 8-63 "
        "character passphrase"
    ]
    assert issues(with_passphrase("short", "wpa3-sae"))[0].endswith("got 5 characters")


def test_passphrase_is_not_in_repr() -> None:
    config = validate_config(with_passphrase("do-not-log-me"))
    assert "do-not-log-me" not in repr(config)


# ---------------------------------------------------------------------------- security


def test_enterprise_needs_radius_servers() -> None:
    enterprise: dict[str, Any] = {"mode": "wpa2-enterprise", "radius": []}
    assert issues(base(ssids=[ssid(security=enterprise)])) == [
        "ssids.0.security.wpa2-enterprise.radius: wpa2-enterprise needs 1-4 RADIUS servers, got 0"
    ]
    del enterprise["radius"]
    assert issues(base(ssids=[ssid(security=enterprise)])) == [
        "ssids.0.security.wpa2-enterprise.radius: Field required"
    ]


def test_enterprise_with_radius_servers() -> None:
    enterprise = {
        "mode": "wpa2-enterprise",
        "radius": [
            {"host": "radius1.example.net", "secret": "s3cret"},
            {"host": "2001:db8::1", "port": 11812, "secret": "s3cret"},
        ],
    }
    config = validate_config(base(ssids=[ssid(security=enterprise)]))
    security = config.ssids[0].security
    assert security.mode == "wpa2-enterprise"
    assert [r.port for r in security.radius] == [1812, 11812]


@pytest.mark.parametrize(
    ("server", "path"),
    [
        ({"host": "bad host!", "secret": "x"}, "host"),
        ({"host": "-bad.example", "secret": "x"}, "host"),
        ({"host": "r.example", "port": 70000, "secret": "x"}, "port"),
        ({"host": "r.example", "secret": ""}, "secret"),
        ({"host": "r.example"}, "secret"),
    ],
)
def test_bad_radius_server(server: dict[str, Any], path: str) -> None:
    enterprise = {"mode": "wpa2-enterprise", "radius": [server]}
    found = issues(base(ssids=[ssid(security=enterprise)]))
    assert found[0].startswith(f"ssids.0.security.wpa2-enterprise.radius.0.{path}: ")


def test_unknown_security_mode() -> None:
    found = issues(base(ssids=[ssid(security={"mode": "wep", "key": "abc"})]))
    assert found[0].startswith("ssids.0.security: Input tag 'wep' found using 'mode' does not")


@pytest.mark.parametrize(
    "security",
    [
        {"mode": "open"},
        PSK,
        {"mode": "wpa2-enterprise", "radius": [{"host": "10.0.0.1", "secret": "x"}]},
    ],
)
def test_6ghz_ssid_requires_wpa3(security: dict[str, Any]) -> None:
    radios = {"6GHz": {"channel": 37}}
    data = base(country="BR", radios=radios, ssids=[ssid("Six", security, ["6GHz"])])
    assert issues(data) == [
        f"ssids.0.security.mode: SSID 'Six' is offered on 6GHz, which "
        f"requires wpa3-sae, not {security['mode']}"
    ]
    validate_config(base(country="BR", radios=radios, ssids=[ssid("Six", SAE, ["6GHz"])]))


# ------------------------------------------------------------------ channels and widths


def test_channel_14_only_in_japan() -> None:
    validate_config({"country": "JP", "radios": {"2.4GHz": {"channel": 14}}})
    assert issues({"country": "DE", "radios": {"2.4GHz": {"channel": 14}}}) == [
        "radios.2.4GHz.channel: channel 14 is not allowed on 2.4GHz in DE (allowed: 1-13)"
    ]
    assert issues({"country": "US", "radios": {"2.4GHz": {"channel": 12}}}) == [
        "radios.2.4GHz.channel: channel 12 is not allowed on 2.4GHz in US (allowed: 1-11)"
    ]


def test_channel_14_is_20_mhz_only() -> None:
    assert issues({"country": "JP", "radios": {"2.4GHz": {"channel": 14, "width": 40}}}) == [
        "radios.2.4GHz.width: channel 14 cannot use 40 MHz in JP (40 MHz channels: 1-13)"
    ]


@pytest.mark.parametrize(
    ("country", "band", "channel", "width"),
    [
        ("US", "2.4GHz", 1, 40),
        ("US", "2.4GHz", 11, 40),
        ("DE", "2.4GHz", 13, 40),
        ("US", "5GHz", 36, 160),
        ("US", "5GHz", 64, 160),
        ("US", "5GHz", 144, 80),
        ("US", "5GHz", 165, 20),
        ("US", "5GHz", 149, 80),
        ("DE", "5GHz", 100, 160),
        ("BR", "6GHz", 1, 320),
        ("BR", "6GHz", 221, 160),
        ("BR", "6GHz", 233, 20),
        ("BR", "6GHz", 225, 40),
        ("DE", "5GHz", 132, 80),  # 144 is open since ETSI's 5725-5875 MHz SRD rule
        ("FR", "5GHz", 149, 20),
        ("AQ", "2.4GHz", 11, 20),  # not in the database: world domain
        ("DE", "6GHz", 93, 20),
        ("DE", "6GHz", 33, 320),
        ("CN", "5GHz", 161, 80),
        ("JP", "5GHz", 144, 80),
        ("BR", "5GHz", 64, 160),
        ("DE", "6GHz", 65, 320),  # 320-2 block 33-93 fits the European 1-93
    ],
)
def test_valid_channel_and_width(country: str, band: str, channel: int, width: int) -> None:
    validate_config({"country": country, "radios": {band: {"channel": channel, "width": width}}})


@pytest.mark.parametrize(
    ("country", "band", "channel", "width", "message"),
    [
        (
            "US",
            "5GHz",
            165,
            40,
            "radios.5GHz.width: channel 165 cannot use 40 MHz in US "
            "(40 MHz channels: 36-64, 100-144, 149-161)",
        ),
        (
            "US",
            "5GHz",
            149,
            160,
            "radios.5GHz.width: channel 149 cannot use 160 MHz in US "
            "(160 MHz channels: 36-64, 100-128)",
        ),
        (
            "DE",
            "5GHz",
            173,
            40,
            "radios.5GHz.width: channel 173 cannot use 40 MHz in DE "
            "(40 MHz channels: 36-64, 100-144, 149-169)",
        ),
        (
            "AQ",
            "2.4GHz",
            12,
            20,
            "radios.2.4GHz.channel: channel 12 is not allowed on 2.4GHz in AQ (allowed: 1-11)",
        ),
        (
            "US",
            "5GHz",
            37,
            20,
            "radios.5GHz.channel: channel 37 is not allowed on 5GHz in US "
            "(allowed: 36-64, 100-144, 149-165)",
        ),
        (
            "BR",
            "6GHz",
            2,
            20,
            "radios.6GHz.channel: channel 2 is not allowed on 6GHz in BR (allowed: 1-233)",
        ),
        (
            "BR",
            "6GHz",
            225,
            80,
            "radios.6GHz.width: channel 225 cannot use 80 MHz in BR (80 MHz channels: 1-221)",
        ),
        (
            "DE",
            "6GHz",
            97,
            20,
            "radios.6GHz.channel: channel 97 is not allowed on 6GHz in DE (allowed: 1-93)",
        ),
        (
            "US",
            "2.4GHz",
            6,
            80,
            "radios.2.4GHz.width: 80 MHz is not available on 2.4GHz (allowed: 20/40 MHz)",
        ),
        (
            "US",
            "5GHz",
            36,
            320,
            "radios.5GHz.width: 320 MHz is not available on 5GHz (allowed: 20/40/80/160 MHz)",
        ),
        ("CN", "6GHz", 1, 20, "radios.6GHz: 6GHz is not permitted in CN"),
        # NO-IR in wireless-regdb: no access point may start a network there
        ("US", "6GHz", "auto", 20, "radios.6GHz: 6GHz is not permitted in US"),
        ("AQ", "5GHz", "auto", 20, "radios.5GHz: 5GHz is not permitted in AQ"),
    ],
)
def test_invalid_channel_or_width(
    country: str, band: str, channel: Any, width: int, message: str
) -> None:
    data = {"country": country, "radios": {band: {"channel": channel, "width": width}}}
    assert issues(data) == [message]


def test_auto_channel_only_needs_some_usable_channel() -> None:
    validate_config({"country": "DE", "radios": {"6GHz": {"width": 320}}})
    # Hong Kong's 6 GHz rule allows at most 160 MHz
    assert issues({"country": "HK", "radios": {"6GHz": {"width": 320}}}) == [
        "radios.6GHz.width: no 6GHz channel allows 320 MHz in HK"
    ]


@pytest.mark.parametrize("country", ["ZZ", "XX", "QQ", "AA", "EU", "UK"])
def test_country_codes_outside_iso_3166_are_refused(country: str) -> None:
    assert issues({"country": country, "radios": {"2.4GHz": {}}}) == [
        f"country: {country!r} is not an ISO 3166-1 alpha-2 country code"
    ]


def test_allowed_channels_tables() -> None:
    assert allowed_channels(Band.GHZ_2_4, 20, "US") == frozenset(range(1, 12))
    assert allowed_channels(Band.GHZ_6, 20, "US") == frozenset()  # NO-IR
    assert allowed_channels(Band.GHZ_6, 20, "BR") == frozenset(range(1, 234, 4))
    assert len(allowed_channels(Band.GHZ_6, 320, "BR")) == 6 * 16 - 5 * 8  # overlapping 320s
    assert allowed_channels(Band.GHZ_5, 160, "CN") == frozenset(range(36, 65, 4))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("country", "us", "country: String should match pattern '^[A-Z]{2}$'"),
        ("country", "USA", "country: String should match pattern '^[A-Z]{2}$'"),
        ("radios", {}, "radios: Dictionary should have at least 1 item after validation, not 0"),
        ("radios", {"7GHz": {}}, "radios.7GHz.[key]: Input should be '2.4GHz', '5GHz' or '6GHz'"),
        ("management_vlan", 5000, "management_vlan: Input should be less than or equal to 4094"),
        ("ntp_servers", ["a.example"] * 5, "ntp_servers: Tuple should have at most 4 items"),
        ("ntp_servers", ["a.example", "a.example"], "ntp_servers: NTP servers must not repeat"),
        ("ntp_servers", ["not a host"], "ntp_servers.0: not an IP address or DNS host name"),
        ("syslog", {"host": "10.0.0.9", "protocol": "smoke"}, "syslog.protocol: Input should be"),
        ("syslog", {"port": 514}, "syslog.host: Field required"),
        ("radio_count", 2, "radio_count: Extra inputs are not permitted"),
    ],
)
def test_top_level_fields(field: str, value: Any, expected: str) -> None:
    found = issues(base(**{field: value}))
    assert any(i.startswith(expected) for i in found), found


def test_radio_fields() -> None:
    found = issues(
        base(radios={"5GHz": {"channel": 0, "width": 60, "tx_power_dbm": 31, "power": 1}})
    )
    paths = sorted(i.split(":")[0] for i in found)
    assert "radios.5GHz.width" in paths
    assert "radios.5GHz.power" in paths
    assert any(p.startswith("radios.5GHz.channel") for p in paths)
    assert any(p.startswith("radios.5GHz.tx_power_dbm") for p in paths)


def test_every_issue_is_reported_at_once() -> None:
    data = base(
        radios={"2.4GHz": {"channel": 14}},
        ssids=[ssid("A", bands=["5GHz"]), ssid("B", bands=["2.4GHz"]), ssid("B", bands=["2.4GHz"])],
    )
    assert [i.split(":")[0] for i in issues(data)] == [
        "radios.2.4GHz.channel",
        "ssids.0.bands",
        "ssids.2.name",
    ]


def test_model_is_frozen() -> None:
    config = validate_config(base())
    with pytest.raises(ValueError, match="frozen"):
        config.country = "DE"  # type: ignore[misc]
    assert isinstance(config, WifiConfig)


@pytest.mark.parametrize(
    ("host", "stored"),
    [
        ("NTP.Example.NET", "ntp.example.net"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("192.0.2.10", "192.0.2.10"),
        ("time", "time"),
        ("a-b.example.", "a-b.example."),
    ],
)
def test_hosts_are_normalised(host: str, stored: str) -> None:
    assert validate_config(base(ntp_servers=[host])).ntp_servers == (stored,)


@pytest.mark.parametrize(
    "host", ["10.0.0.256", "a..b", "-a.example", "a_b.example", "", "x" * 64 + ".example", "a b"]
)
def test_bad_hosts(host: str) -> None:
    assert issues(base(ntp_servers=[host]))[0].startswith("ntp_servers.0: ")
