"""Canonical JSON, the config hash, and template/override merging."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from schemas.examples import example_wifi_config
from schemas.wifi import (
    InvalidConfig,
    WifiConfig,
    canonical_json,
    config_hash,
    effective_config,
    merge_patch,
    validate_config,
)


def example() -> dict[str, Any]:
    return example_wifi_config().model_dump(mode="json")


def reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reverse_keys(v) for v in value]
    return value


def test_canonical_form() -> None:
    config = validate_config(
        {
            "country": "US",
            "radios": {"5GHz": {}},
            "ssids": [{"name": "Café ☕", "security": {"mode": "open"}, "bands": ["5GHz"]}],
        }
    )
    raw = canonical_json(config)
    assert (
        raw
        == (
            '{"country":"US","management_vlan":null,"ntp_servers":[],'
            '"radios":{"5GHz":{"channel":"auto","tx_power_dbm":"auto","width":20}},'
            '"ssids":[{"bands":["5GHz"],"hidden":false,"name":"Café ☕",'
            '"security":{"mode":"open"},"vlan":null}],"syslog":null}'
        ).encode()
    )
    assert config_hash(config) == hashlib.sha256(raw).hexdigest()
    assert WifiConfig.model_validate_json(raw) == config


def test_key_order_does_not_change_the_hash() -> None:
    data = example()
    shuffled = reverse_keys(data)
    assert json.dumps(shuffled) != json.dumps(data)
    assert config_hash(validate_config(shuffled)) == config_hash(validate_config(data))


def test_defaults_spelled_out_or_omitted_give_the_same_hash() -> None:
    short = {"country": "US", "radios": {"5GHz": {}}}
    long = {
        "country": "US",
        "radios": {"5GHz": {"channel": "auto", "width": 20, "tx_power_dbm": "auto"}},
        "ssids": [],
        "management_vlan": None,
        "ntp_servers": [],
        "syslog": None,
    }
    assert config_hash(validate_config(short)) == config_hash(validate_config(long))


def test_band_order_in_an_ssid_carries_no_meaning() -> None:
    a, b = example(), example()
    b["ssids"][0]["bands"] = list(reversed(b["ssids"][0]["bands"]))
    assert a["ssids"][0]["bands"] != b["ssids"][0]["bands"]
    assert config_hash(validate_config(a)) == config_hash(validate_config(b))


def test_hash_is_stable_across_runs() -> None:
    """Pinned: a change here means every device gets its config again. Be sure."""
    assert config_hash(validate_config({"country": "US", "radios": {"5GHz": {}}})) == (
        hashlib.sha256(
            b'{"country":"US","management_vlan":null,"ntp_servers":[],"radios":'
            b'{"5GHz":{"channel":"auto","tx_power_dbm":"auto","width":20}},'
            b'"ssids":[],"syslog":null}'
        ).hexdigest()
    )


CHANGES: list[tuple[str, Any]] = [
    ("country", "FR"),
    ("radios/2.4GHz/channel", 1),
    ("radios/5GHz/width", 40),
    ("radios/2.4GHz/tx_power_dbm", 16),
    ("ssids/0/name", "Lobby2"),
    ("ssids/0/security/passphrase", "welcome-guest-2027"),
    ("ssids/0/hidden", True),
    ("ssids/0/vlan", 21),
    ("ssids/0/vlan", None),
    ("ssids/0/bands", ["2.4GHz"]),
    ("ssids/2/security/radius/0/port", 1645),
    ("ssids/2/security/radius/0/secret", "other"),
    ("management_vlan", None),
    ("ntp_servers", ["time.example.net"]),
    ("syslog/port", 1514),
    ("syslog", None),
]


@pytest.mark.parametrize(("path", "value"), CHANGES)
def test_any_change_changes_the_hash(path: str, value: Any) -> None:
    data = example()
    target = data
    parts: list[Any] = [int(p) if p.isdigit() else p for p in path.split("/")]
    for part in parts[:-1]:
        target = target[part]
    assert target[parts[-1]] != value
    target[parts[-1]] = value
    assert config_hash(validate_config(data)) != config_hash(example_wifi_config())


def test_ssid_order_is_part_of_the_config() -> None:
    data = example()
    data["ssids"].reverse()
    assert config_hash(validate_config(data)) != config_hash(example_wifi_config())


# -------------------------------------------------------------------------------- merge


def test_merge_patch_rfc7396_examples() -> None:
    """The examples of RFC 7396, appendix A."""
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in cases:
        assert merge_patch(target, patch) == expected


def test_merge_patch_does_not_modify_or_share_its_inputs() -> None:
    template = {"radios": {"5GHz": {"channel": 36}}, "ntp_servers": ["a.example"]}
    override = {"radios": {"5GHz": {"width": 40}}, "ssids": [{"name": "x"}]}
    before = copy.deepcopy((template, override))
    merged = merge_patch(template, override)
    merged["radios"]["5GHz"]["channel"] = 1
    merged["ntp_servers"].append("b.example")
    merged["ssids"][0]["name"] = "y"
    assert (template, override) == before


def test_effective_config_overrides_one_radio_and_removes_syslog() -> None:
    template = example()
    override = {"radios": {"5GHz": {"channel": 52}}, "syslog": None}
    config = effective_config(template, override)
    assert config.radios["5GHz"].channel == 52  # type: ignore[index]
    assert config.radios["5GHz"].width == 80  # type: ignore[index]
    assert config.syslog is None
    assert config.ssids == example_wifi_config().ssids
    assert effective_config(template, None) == example_wifi_config()


def test_effective_config_validates_the_merged_result() -> None:
    template = example()
    with pytest.raises(InvalidConfig) as info:
        effective_config(template, {"radios": {"5GHz": {"channel": 165}}})
    assert [str(i) for i in info.value.issues] == [
        "radios.5GHz.width: channel 165 cannot use 80 MHz in DE "
        "(80 MHz channels: 36-64, 100-144, 149-161)"
    ]
    with pytest.raises(InvalidConfig, match=r"radios\.6GHz: 6GHz is not permitted in CN"):
        effective_config(template, {"country": "CN"})
