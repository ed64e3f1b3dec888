"""Provisioning payloads, topics and sealing: the pieces both ends share."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.claims import valid_signature
from device.errors import ProvisioningError, Refused
from device.provisioning import new_request, read_reply
from outpost.sealing import IdentityKey, ReplyKey, SealError, seal
from schemas.provisioning import (
    Identity,
    ProvisionReply,
    ProvisionRequest,
    RefusalReason,
    claim_id_of,
    claim_username,
    normalize_serial,
)
from schemas.topics import (
    TopicError,
    claim_reply_filter,
    is_reply_topic_of,
    parse_provision_request,
    provision_reply_topic,
    provision_request_topic,
    provision_requests,
)

CLAIM = "0123456789ab"


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("AA:BB:CC:00:00:01", "aa:bb:cc:00:00:01"),
        ("aa-bb-cc-00-00-01", "aa:bb:cc:00:00:01"),
        ("AABBCC000001", "aa:bb:cc:00:00:01"),
        ("aa:bb-cc:00:00:01", "aa:bb-cc:00:00:01"),  # mixed separators: not a MAC
        ("SN-0042", "SN-0042"),
        ("sn-0042", "sn-0042"),
    ],
)
def test_normalize_serial(given: str, normal: str) -> None:
    assert normalize_serial(given) == normal


def test_claim_secret_and_username() -> None:
    assert claim_id_of(f"opc_{CLAIM}_" + "x" * 43) == CLAIM
    assert claim_username(CLAIM) == f"claim/{CLAIM}"
    for bad in ("", "opc_short_" + "x" * 43, f"opt_{CLAIM}_" + "x" * 43, f"opc_{CLAIM}_x"):
        with pytest.raises(ValueError, match="claim secret"):
            claim_id_of(bad)


def test_topics() -> None:
    token = "t" * 24
    assert provision_request_topic(CLAIM) == f"provision/{CLAIM}/request"
    assert provision_reply_topic(CLAIM, token) == f"provision/{CLAIM}/reply/{token}"
    assert provision_requests("g") == "$share/g/provision/+/request"
    assert provision_requests() == "provision/+/request"
    assert claim_reply_filter(CLAIM) == f"provision/{CLAIM}/reply/+"
    assert parse_provision_request(f"provision/{CLAIM}/request") == CLAIM
    assert is_reply_topic_of(f"provision/{CLAIM}/reply/{token}", CLAIM)
    for bad in (
        f"provision/{'f' * 12}/reply/{token}",  # another claim's
        f"provision/{CLAIM}/reply/short",
        f"provision/{CLAIM}/reply/{token}/more",
        f"devices/{CLAIM}/reply/{token}",
        f"provision/{CLAIM}/reply/+",
    ):
        assert not is_reply_topic_of(bad, CLAIM), bad
    for bad in ("provision/XYZ/request", f"provision/{CLAIM}/reply", "devices/a/state"):
        with pytest.raises(TopicError):
            parse_provision_request(bad)
    with pytest.raises(TopicError):
        provision_request_topic("not-a-claim")
    with pytest.raises(TopicError):
        provision_reply_topic(CLAIM, "a/b")


def test_sealed_only_opens_with_its_key() -> None:
    mine, other = ReplyKey(), ReplyKey()
    sealed = seal(mine.public_text, b"secret")
    assert mine.open(sealed) == b"secret"
    with pytest.raises(SealError):
        other.open(sealed)
    # another first character (replacing it by a fixed one changed nothing when the box
    # happened to start with it: 1 run in 64 failed)
    first = "B" if sealed.box[0] == "A" else "A"
    tampered = sealed.model_copy(update={"box": first + sealed.box[1:]})
    assert tampered.box != sealed.box
    with pytest.raises(SealError):
        mine.open(tampered)


def test_identity_key_survives_storage() -> None:
    key = IdentityKey()
    again = IdentityKey(key.seed_text)
    assert again.public_text == key.public_text
    assert again.sign(b"x") == key.sign(b"x")  # Ed25519 is deterministic


def identity() -> Identity:
    return Identity(
        device_id="dev-0001",
        username="dev-0001",
        client_id="dev-0001",
        password="p" * 32,
        tenant_id="t",
    )


def test_request_and_reply_round_trip() -> None:
    exchange = new_request(CLAIM, "SN-1", "ap-1", IdentityKey())
    parsed = ProvisionRequest.model_validate_json(exchange.payload)
    assert parsed == exchange.request
    assert exchange.properties().ResponseTopic == exchange.reply_topic
    sealed = seal(exchange.request.reply_key, identity().model_dump_json().encode())
    ok = ProvisionReply(status="ok", sealed=sealed).model_dump_json().encode()
    assert read_reply(ok, exchange) == identity()
    refused = ProvisionReply(status="refused", reason="over_limit", detail="full")
    with pytest.raises(Refused) as caught:
        read_reply(refused.model_dump_json().encode(), exchange)
    assert (caught.value.reason, caught.value.detail) == ("over_limit", "full")
    other = new_request(CLAIM, "SN-1", "ap-1", IdentityKey())  # another reply key
    with pytest.raises(ProvisioningError, match="unreadable"):
        read_reply(ok, other)
    with pytest.raises(ProvisioningError, match="too large"):
        read_reply(b"x" * 10_000, exchange)
    with pytest.raises(ProvisioningError, match="unreadable"):
        read_reply(b"{}", exchange)


@pytest.mark.parametrize(
    "change",
    [
        {"serial": "has space"},
        {"serial": "x" * 65},
        {"identity_key": "short"},
        {"nonce": "short"},
        {"signature": "A" * 10},
        {"hardware_model": ""},
    ],
)
def test_request_fields_are_bounded(change) -> None:
    exchange = new_request(CLAIM, "SN-1", "ap-1", IdentityKey())
    with pytest.raises(ValidationError):
        ProvisionRequest.model_validate(exchange.request.model_dump() | change)


def test_protocol_page_examples_are_valid() -> None:
    """The request example verifies (signature included); the reply example parses."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "protocol.md").read_text()
    found = re.findall(r"(Request|Reply) on `([^`]+)`\n+ *```json\n(.*?)\n *```", text, re.S)
    assert sorted(kind for kind, _, _ in found) == ["Reply", "Request"]
    for kind, topic, body in found:
        if kind == "Request":
            claim_id = parse_provision_request(topic)
            request = ProvisionRequest.model_validate_json(body)
            assert valid_signature(request, claim_id)
        else:
            assert is_reply_topic_of(topic, CLAIM)
            assert ProvisionReply.model_validate_json(body).reason in set(RefusalReason)
