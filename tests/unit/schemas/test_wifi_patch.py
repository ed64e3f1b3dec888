"""Templates and overrides are typed partial configs; what the api shows has no secrets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.wifi import (
    WifiConfigPatch,
    WifiConfigPatchPublic,
    WifiConfigPublic,
    effective_config,
    redact,
)

SSIDS = [
    {"name": "Office", "security": {"mode": "wpa2-psk", "passphrase": "p" * 12}, "bands": ["5GHz"]},
    {
        "name": "Staff",
        "security": {"mode": "wpa2-enterprise", "radius": [{"host": "10.0.0.1", "secret": "s"}]},
        "bands": ["5GHz"],
    },
]


def test_a_patch_keeps_only_what_was_written_and_nulls_that_remove():
    patch = WifiConfigPatch.model_validate({"radios": {"5GHz": {"width": 80}, "2.4GHz": None}})
    assert patch.to_json() == {"radios": {"5GHz": {"width": 80}, "2.4GHz": None}}
    template = {"country": "DE", "radios": {"2.4GHz": {}, "5GHz": {"channel": 36}}}
    config = effective_config(template, patch.to_json())
    assert set(config.radios) == {"5GHz"}
    assert config.radios["5GHz"].width == 80  # type: ignore[index]


@pytest.mark.parametrize(
    "patch",
    [
        {"country": "ZZ"},
        {"radios": {"7GHz": {}}},
        {"radios": {"5GHz": {"channel": 0}}},
        {"ssids": [{"name": "x", "security": {"mode": "wpa2-psk", "passphrase": "short"}}]},
        {"management_vlan": 2**64},
        {"typo": 1},
    ],
)
def test_a_wrong_type_is_refused_where_it_is_written(patch):
    with pytest.raises(ValidationError):
        WifiConfigPatch.model_validate(patch)


def test_redact_replaces_every_secret_and_keeps_the_rest():
    shown = redact({"country": "DE", "ssids": SSIDS})
    assert shown is not None
    assert shown["ssids"][0]["security"] == {"mode": "wpa2-psk", "passphrase_set": True}
    assert shown["ssids"][1]["security"]["radius"] == [{"host": "10.0.0.1", "secret_set": True}]
    assert "p" * 12 not in str(shown)
    WifiConfigPatchPublic.model_validate(shown)
    config = effective_config({"country": "DE", "radios": {"5GHz": {}}, "ssids": SSIDS})
    public = WifiConfigPublic.model_validate(redact(config.model_dump(mode="json")))
    assert public.ssids[1].security.mode == "wpa2-enterprise"
