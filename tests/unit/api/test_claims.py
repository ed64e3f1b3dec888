"""Provisioning decisions: claim validity, serial bindings, rate limits (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.claims import (
    Binding,
    RateLimiter,
    binding_decision,
    claim_refusal,
    new_claim,
    secret_hash,
    valid_signature,
)
from device.provisioning import new_request
from outpost.sealing import IdentityKey
from schemas.documents import ClaimDoc, SerialBindingDoc
from schemas.provisioning import RefusalReason, claim_id_of

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def claim(**fields) -> ClaimDoc:
    base = {"_id": "0123456789ab", "tenant_id": "t", "name": "c", "secret_hash": "x"}
    return ClaimDoc.model_validate(base | {"created_at": NOW} | fields)


@pytest.mark.parametrize(
    ("fields", "serial", "expected"),
    [
        ({}, "SN-1", None),
        ({"revoked_at": NOW}, "SN-1", RefusalReason.REVOKED),
        ({"expires_at": NOW}, "SN-1", RefusalReason.EXPIRED),
        ({"expires_at": NOW + timedelta(seconds=1)}, "SN-1", None),
        ({"allow": ["SN-1"]}, "SN-1", None),
        ({"allow": ["SN-1"]}, "SN-2", RefusalReason.NOT_ALLOWED),
        ({"allow": ["sn-1"]}, "SN-1", RefusalReason.NOT_ALLOWED),  # serials are exact
        ({"allow": ["aa:bb:cc:00:00:01"]}, "AA-BB-CC-00-00-01", None),  # MACs are not
        ({"allow": ["aa:bb:cc:00:00:01"]}, "aabbcc000001", None),
        ({"allow": []}, "SN-1", RefusalReason.NOT_ALLOWED),
        # revoked wins over expired, expired over the allow-list
        ({"revoked_at": NOW, "expires_at": NOW}, "SN-1", RefusalReason.REVOKED),
        ({"expires_at": NOW, "allow": []}, "SN-1", RefusalReason.EXPIRED),
    ],
)
def test_claim_refusal(fields, serial, expected) -> None:
    assert claim_refusal(claim(**fields), serial, NOW) == expected


def test_unknown_claim() -> None:
    assert claim_refusal(None, "SN-1", NOW) is RefusalReason.UNKNOWN_CLAIM


def binding(key: str | None) -> SerialBindingDoc:
    return SerialBindingDoc.model_validate(
        {
            "_id": "t:SN-1",
            "tenant_id": "t",
            "serial": "SN-1",
            "device_id": "dev-1",
            "claim_id": "0123456789ab",
            "identity_key": key,
            "bound_at": NOW,
        }
    )


def test_binding_decision() -> None:
    assert binding_decision(None, "k1") is Binding.NEW
    assert binding_decision(binding("k1"), "k1") is Binding.SAME
    assert binding_decision(binding("k1"), "k2") is Binding.MISMATCH
    assert binding_decision(binding(None), "k2") is Binding.REBIND


def test_rate_limiter_burst_then_rate() -> None:
    limits = RateLimiter(rate=0.5, burst=2)
    assert [limits.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limits.allow("b", 0.0)  # per key
    assert not limits.allow("a", 1.0)  # half a token back
    assert limits.allow("a", 2.1)
    assert not limits.allow("a", 2.2)
    later = [limits.allow("a", 100.0) for _ in range(3)]
    assert later == [True, True, False]  # never more than the burst saved up


def test_rate_limiter_forgets_the_least_recent_key() -> None:
    limits = RateLimiter(rate=0.001, burst=1, max_keys=2)
    assert limits.allow("a", 0.0)
    assert limits.allow("b", 0.0)
    assert limits.allow("c", 0.0)  # "a" is forgotten
    assert limits.allow("a", 0.0)
    assert not limits.allow("c", 0.0)


def test_new_claim_secret_names_its_claim_and_is_stored_hashed() -> None:
    made = new_claim()
    assert claim_id_of(made.secret) == made.claim_id
    assert made.hash == secret_hash(made.secret)
    assert made.secret not in made.hash
    assert new_claim().secret != made.secret


def test_signature_binds_claim_and_every_field() -> None:
    exchange = new_request("0123456789ab", "SN-1", "ap-1", IdentityKey())
    assert valid_signature(exchange.request, "0123456789ab")
    assert not valid_signature(exchange.request, "ba9876543210")  # another claim
    changed = exchange.request.model_copy(update={"serial": "SN-2"})
    assert not valid_signature(changed, "0123456789ab")
    other = IdentityKey().public_text
    assert not valid_signature(
        exchange.request.model_copy(update={"identity_key": other}), "0123456789ab"
    )
