"""A device's side of zero-touch provisioning: from a claim secret and a serial to an
identity (device id, own password, broker, firmware key). docs/protocol.md has the flow.

One exchange (:func:`provision` on asyncio for the simulator, :func:`provision_blocking`
on paho for the reference agent; both use :func:`new_request` and :func:`read_reply`)::

    CONNECT as claim/<claim id>, password = the claim secret, a random client id
    SUBSCRIBE provision/<claim>/reply/<token>         token: 192 random bits
    PUBLISH   provision/<claim>/request  (QoS 1, not retained; Response Topic = the reply
              topic, Correlation Data = token): serial, model, identity key, reply key,
              nonce, signature
    ◄── reply: ok + credentials sealed to the reply key, or refused + reason
    DISCONNECT; connect again as the device (its own account)

A refusal for ``rate_limited`` or ``unavailable``, or no reply in time (30 s by default:
a batch asking at once queues at the api, and a device that gives up too early asks
again, which costs the api a second answer), is retried with backoff (full jitter); any
other refusal is final (:class:`~device.errors.Refused`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, replace

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from device.errors import ProvisioningError, Refused
from outpost.mqtt import Endpoint, aiomqtt_client, paho_client, reconnect_delay
from outpost.sealing import IdentityKey, ReplyKey, SealError
from schemas.provisioning import (
    MAX_REPLY_BYTES,
    Identity,
    ProvisionReply,
    ProvisionRequest,
    RefusalReason,
    claim_id_of,
    claim_username,
    signed_bytes,
)
from schemas.topics import provision_reply_topic, provision_request_topic

__all__ = ["Exchange", "new_request", "provision", "provision_blocking", "read_reply"]

RETRIED = {RefusalReason.RATE_LIMITED.value, RefusalReason.UNAVAILABLE.value}


@dataclass(frozen=True)
class Exchange:
    """One request in flight: what to publish where, and the key that opens the reply."""

    claim_id: str
    token: str
    request: ProvisionRequest
    reply_key: ReplyKey

    @property
    def request_topic(self) -> str:
        return provision_request_topic(self.claim_id)

    @property
    def reply_topic(self) -> str:
        return provision_reply_topic(self.claim_id, self.token)

    def properties(self) -> Properties:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = self.token.encode()
        return props

    @property
    def payload(self) -> bytes:
        return self.request.model_dump_json().encode()


def new_request(claim_id: str, serial: str, hardware_model: str, identity: IdentityKey) -> Exchange:
    """A signed request with a fresh reply key, nonce and reply token."""
    reply_key = ReplyKey()
    unsigned = {
        "serial": serial,
        "hardware_model": hardware_model,
        "identity_key": identity.public_text,
        "reply_key": reply_key.public_text,
        "nonce": secrets.token_urlsafe(24),
    }
    draft = ProvisionRequest.model_validate(unsigned | {"signature": "A" * 86 + "=="})
    signature = identity.sign(signed_bytes(draft, claim_id))
    request = draft.model_copy(update={"signature": signature})
    return Exchange(claim_id, secrets.token_urlsafe(24), request, reply_key)


def read_reply(payload: bytes, exchange: Exchange) -> Identity:
    """The identity in a reply; :class:`Refused` or :class:`ProvisioningError` otherwise."""
    if len(payload) > MAX_REPLY_BYTES:
        raise ProvisioningError("reply too large")
    try:
        reply = ProvisionReply.model_validate_json(payload)
        if reply.status == "refused" or reply.sealed is None:
            reason = reply.reason or "refused"
            raise Refused(reason, reply.detail)
        return Identity.model_validate_json(exchange.reply_key.open(reply.sealed))
    except (ValidationError, SealError) as exc:
        raise ProvisioningError(f"unreadable reply: {exc}") from None


def _claim_account(endpoint: Endpoint, claim_secret: str) -> tuple[str, Endpoint]:
    try:
        claim_id = claim_id_of(claim_secret)
    except ValueError as exc:
        raise ProvisioningError(str(exc)) from None
    return claim_id, replace(endpoint, username=claim_username(claim_id), password=claim_secret)


def _client_id() -> str:
    return f"provision-{secrets.token_hex(8)}"


async def _ask(account: Endpoint, exchange: Exchange, wait_s: float) -> Identity:
    try:
        async with asyncio.timeout(wait_s):
            async with aiomqtt_client(account, _client_id(), timeout=wait_s) as client:
                await client.subscribe(exchange.reply_topic, qos=1)
                await client.publish(
                    exchange.request_topic,
                    exchange.payload,
                    qos=1,
                    properties=exchange.properties(),
                )
                async for message in client.messages:
                    if message.topic.value == exchange.reply_topic:
                        raw = message.payload if isinstance(message.payload, bytes) else b""
                        return read_reply(raw, exchange)
    except TimeoutError:
        raise ProvisioningError("no reply in time") from None
    except aiomqtt.MqttError as exc:
        raise ProvisioningError(f"broker: {exc}") from None
    raise ProvisioningError("connection closed before the reply")


async def provision(
    endpoint: Endpoint,
    claim_secret: str,
    serial: str,
    hardware_model: str,
    identity: IdentityKey,
    *,
    wait_s: float = 30.0,
    attempts: int = 6,
    logger: logging.Logger | None = None,
) -> Identity:
    """Ask for an identity until one comes, a final refusal, or ``attempts`` run out."""
    claim_id, account = _claim_account(endpoint, claim_secret)
    for attempt in range(attempts):
        exchange = new_request(claim_id, serial, hardware_model, identity)
        try:
            return await _ask(account, exchange, wait_s)
        except Refused as refused:
            if refused.reason not in RETRIED or attempt == attempts - 1:
                raise
        except ProvisioningError as exc:
            if attempt == attempts - 1:
                raise
            if logger is not None:
                logger.info("provisioning retried", extra={"serial": serial, "error": str(exc)})
        await asyncio.sleep(reconnect_delay(attempt, base=1.0, cap=30.0))
    raise ProvisioningError("no attempts")  # attempts < 1


def _ask_blocking(account: Endpoint, exchange: Exchange, timeout: float) -> Identity:
    replies: list[bytes] = []
    connected: list[bool] = []
    acked: list[bool] = []
    client = paho_client(account, _client_id())
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.append(not reason.is_failure)
    client.on_message = lambda _c, _u, m: replies.append(bytes(m.payload))
    client.on_subscribe = lambda *_: acked.append(True)
    deadline = time.monotonic() + timeout

    def until(done: list[bytes] | list[bool], what: str) -> None:
        while not done and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        if not done:
            raise ProvisioningError(f"no {what} in time")

    try:
        client.connect(account.host, account.port, keepalive=30)
        until(connected, "CONNACK")
        if not connected[0]:
            raise ProvisioningError("the broker refused the claim account")
        client.subscribe(exchange.reply_topic, qos=1)
        until(acked, "SUBACK")
        client.publish(
            exchange.request_topic, exchange.payload, qos=1, properties=exchange.properties()
        )
        until(replies, "reply")
    except OSError as exc:
        raise ProvisioningError(f"cannot connect: {exc}") from None
    finally:
        client.disconnect()
    return read_reply(replies[0], exchange)


def provision_blocking(
    endpoint: Endpoint,
    claim_secret: str,
    serial: str,
    hardware_model: str,
    identity: IdentityKey,
    *,
    timeout: float = 30.0,
    attempts: int = 6,
) -> Identity:
    """:func:`provision` for a synchronous device (paho, one thread)."""
    claim_id, account = _claim_account(endpoint, claim_secret)
    for attempt in range(attempts):
        exchange = new_request(claim_id, serial, hardware_model, identity)
        try:
            return _ask_blocking(account, exchange, timeout)
        except Refused as refused:
            if refused.reason not in RETRIED or attempt == attempts - 1:
                raise
        except ProvisioningError:
            if attempt == attempts - 1:
                raise
        time.sleep(reconnect_delay(attempt, base=1.0, cap=30.0))
    raise ProvisioningError("no attempts")
