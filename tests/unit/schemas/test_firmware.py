"""Firmware manifests: what the signature covers, and version order."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from outpost import signing
from schemas.firmware import FirmwareManifest, is_downgrade, semver_key
from schemas.protocol import FirmwareRef

SHA = "ab" * 32


def manifest(**changes: object) -> FirmwareManifest:
    base: dict[str, object] = {
        "version": "2.0.0",
        "size": 10,
        "sha256": SHA,
        "hardware_models": ("b", "a"),
    }
    return FirmwareManifest.model_validate(base | changes)


def test_canonical_bytes_ignore_model_order_and_cover_every_field() -> None:
    assert manifest().canonical() == manifest(hardware_models=("a", "b")).canonical()
    assert manifest().canonical() == (
        b'{"hardware_models":["a","b"],"sha256":"' + SHA.encode() + b'","size":10,'
        b'"version":"2.0.0"}'
    )
    key = signing.SigningKey(signing.new_private_key())
    signature = key.sign(manifest())
    assert signing.verify(key.public_text, manifest(hardware_models=("a", "b")), signature)
    for change in ({"version": "2.0.1"}, {"size": 11}, {"sha256": "cd" * 32}):
        assert not signing.verify(key.public_text, manifest(**change), signature), change
    assert not signing.verify(key.public_text, manifest(hardware_models=("a",)), signature)
    assert not signing.verify(key.public_text, manifest(), "not base64!")
    assert not signing.verify("short", manifest(), signature)


def test_a_bad_private_key_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="32-byte seed"):
        signing.SigningKey("bm90IGEga2V5")


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.0.0", "1.0.1"),
        ("1.9.0", "1.10.0"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("1.0.0-rc.1", "1.0.0-rc.1.1"),
    ],
)
def test_semver_order(older: str, newer: str) -> None:
    key_old, key_new = semver_key(older), semver_key(newer)
    assert key_old is not None
    assert key_new is not None
    assert key_old < key_new
    assert is_downgrade(older, newer)
    assert not is_downgrade(newer, older)


def test_build_metadata_is_ignored_and_unordered_versions_count_as_downgrades() -> None:
    assert semver_key("1.0.0+build.5") == semver_key("1.0.0")
    assert not is_downgrade("1.0.0", "1.0.0")
    assert is_downgrade("nightly", "1.0.0")
    assert is_downgrade("1.0.0", "nightly")
    assert not is_downgrade("nightly", "nightly")


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://cdn.example.net/fw.bin?X-Amz-Signature=1", True),
        ("http://127.0.0.1:9000/fw.bin", True),
        ("http://localhost/fw.bin", True),
        ("http://[::1]:9000/fw.bin", True),
        ("http://cdn.example.net/fw.bin", False),
        ("http://10.0.0.5/fw.bin", False),
        ("ftp://127.0.0.1/fw.bin", False),
    ],
)
def test_firmware_urls_are_https_except_to_this_machine(url: str, ok: bool) -> None:
    fields = {
        "version": "1.0.0",
        "size": 1,
        "sha256": SHA,
        "url": url,
        "url_expires_at": "2026-11-30T10:00:00Z",
    }
    if ok:
        assert FirmwareRef.model_validate(fields).url == url
    else:
        with pytest.raises(ValidationError):
            FirmwareRef.model_validate(fields)
