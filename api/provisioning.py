"""Zero-touch provisioning: the api answers devices that hold only a claim's secret.

::

    device (claim account) ── provision/{claim}/request ──► $share/outpost-api/... ──► api (all)
         ▲     response topic provision/{claim}/reply/{token}, correlation data         │
         └──────────────── ProvisionReply (credentials sealed to the reply key) ◄────────┘

Every api instance subscribes through one shared subscription, so each request reaches
one instance (requests and replies are never retained: Mosquitto 2.0.11 hands retained
messages to new shared subscribers, so a retained request is dropped unanswered).
:class:`Provisioner` queues what :class:`~api.broker_link.BrokerLink` hands it and answers
with a few workers. For one request (decisions in :mod:`api.claims`):

1. size, schema, reply topic of this claim, rate limits (claim, serial), signature;
2. the claim: known, not revoked, not expired, serial on its allow-list;
3. the nonce, inserted once (a replayed request is refused);
4. the serial's binding: none → take a slot of the device limit, bind (unique insert),
   register the device as an admin's registration would (registry, broker account,
   group config retained, audit); bound to this identity key → the same device with a
   new password (the old one stops working); bound to another key → refused; reset by
   an admin → this key is bound (a revision) and gets the same device.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError
from pymongo.errors import DuplicateKeyError, PyMongoError

from api import auth, config_service
from api.auth import Principal, Role
from api.claims import Binding, RateLimiter, binding_decision, claim_refusal, valid_signature
from api.errors import ApiError
from api.state import AppState
from api.store import audit, groups
from api.store import claims as store
from api.store import devices as device_store
from api.store.revisions import retrying
from outpost.sealing import seal
from schemas.documents import ClaimDoc, Credentials, DeviceDoc, SerialBindingDoc
from schemas.provisioning import (
    MAX_REQUEST_BYTES,
    Identity,
    ProvisionReply,
    ProvisionRequest,
    RefusalReason,
    Sealed,
    normalize_serial,
)
from schemas.topics import (
    TopicError,
    is_reply_topic_of,
    parse_provision_request,
    provision_requests,
)

__all__ = ["Provisioner", "Refused"]

QUEUE_MAX = 2000
DETAILS = {
    RefusalReason.INVALID: "the request is not a valid provisioning request",
    RefusalReason.UNKNOWN_CLAIM: "no such claim",
    RefusalReason.REVOKED: "the claim was revoked",
    RefusalReason.EXPIRED: "the claim has expired",
    RefusalReason.NOT_ALLOWED: "this serial is not on the claim's allow-list",
    RefusalReason.OVER_LIMIT: "the claim's device limit is reached",
    RefusalReason.RATE_LIMITED: "too many requests; retry later",
    RefusalReason.IDENTITY_MISMATCH: "this serial belongs to another device key; "
    "an admin can reset it",
    RefusalReason.REPLAYED: "this request was answered before; send a new nonce",
    RefusalReason.DECOMMISSIONED: "this serial's device was decommissioned",
    RefusalReason.UNAVAILABLE: "the backend could not answer now; retry later",
}


class Refused(Exception):
    def __init__(self, reason: RefusalReason, detail: str | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.detail = detail or DETAILS[reason]


@dataclass(frozen=True, slots=True)
class Granted:
    identity: Identity
    result: str  # new, repeat, rebind
    sealed: Sealed | None = None


class Provisioner:
    """Answers provisioning requests; :meth:`offer` is BrokerLink's handler."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.log: logging.Logger = state.logger
        s = state.settings
        self.claim_limits = RateLimiter(s.provision_claim_rate, s.provision_claim_burst)
        self.serial_limits = RateLimiter(
            1.0 / s.provision_serial_interval_s, s.provision_serial_burst
        )
        self._queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(QUEUE_MAX)

    @property
    def subscription(self) -> str:
        return provision_requests(self.state.settings.provision_share_group)

    def offer(self, message: aiomqtt.Message) -> None:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:  # the device gets no reply, times out and retries
            self._count(RefusalReason.UNAVAILABLE.value)

    async def run(self) -> None:
        """The workers, until cancelled."""
        async with asyncio.TaskGroup() as group:
            for n in range(self.state.settings.provision_workers):
                group.create_task(self._work(), name=f"api-provision-{n}")

    async def _work(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                with self.state.metrics.provisioning_seconds.time():
                    await self.handle(message)
            except ApiError as exc:  # the reply could not be sent: the device retries
                self.log.warning("provisioning reply lost", extra={"error": exc.detail})
            except Exception:
                self._count("error")
                self.log.exception("provisioning request failed")

    def _count(self, result: str) -> None:
        self.state.metrics.provisioning.labels(result).inc()

    # ------------------------------------------------------------------ transport

    async def handle(self, message: aiomqtt.Message) -> None:
        """Answer one request on its response topic (nothing if it names none of ours)."""
        try:
            claim_id = parse_provision_request(message.topic.value)
        except TopicError:
            self._count(RefusalReason.INVALID.value)
            return
        props = message.properties
        reply_to = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        if message.retain or not isinstance(reply_to, str):
            self._count(RefusalReason.INVALID.value)
            return
        if not is_reply_topic_of(reply_to, claim_id):
            self._count(RefusalReason.INVALID.value)
            return
        payload = message.payload if isinstance(message.payload, bytes) else b""
        reply = await self.answer(claim_id, payload)
        out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if isinstance(correlation, bytes) and len(correlation) <= 256:
            out.CorrelationData = correlation
        await self.state.link.publish(
            reply_to, reply.model_dump_json(exclude_none=True).encode(), properties=out
        )

    async def answer(self, claim_id: str, payload: bytes) -> ProvisionReply:
        """The reply to one request payload (counted by result)."""
        try:
            granted = await self._grant(claim_id, payload)
        except Refused as refused:
            self._count(refused.reason.value)
            self.log.info(
                "provisioning refused",
                extra={"claim_id": claim_id, "reason": refused.reason.value},
            )
            return ProvisionReply(status="refused", reason=refused.reason, detail=refused.detail)
        self._count(granted.result)
        self.log.info(
            "device provisioned",
            extra={
                "claim_id": claim_id,
                "device_id": granted.identity.device_id,
                "result": granted.result,
            },
        )
        return ProvisionReply(status="ok", sealed=granted.sealed)

    # ------------------------------------------------------------------ decisions

    async def _grant(self, claim_id: str, payload: bytes) -> Granted:
        request = self._checked(claim_id, payload)
        try:
            granted = await self._identity(claim_id, request)
        except (ApiError, PyMongoError) as exc:
            self.log.warning(
                "provisioning failed", extra={"claim_id": claim_id, "error": str(exc)[:300]}
            )
            raise Refused(RefusalReason.UNAVAILABLE) from None
        try:
            plain = granted.identity.model_dump_json(exclude_none=True).encode()
            return Granted(granted.identity, granted.result, seal(request.reply_key, plain))
        except ValueError:  # a reply key that is no X25519 point (all-zero shared secret)
            raise Refused(RefusalReason.INVALID, "reply_key is not a usable X25519 key") from None

    def _checked(self, claim_id: str, payload: bytes) -> ProvisionRequest:
        """Size, schema, rate limits and signature: everything before the database."""
        if len(payload) > MAX_REQUEST_BYTES:
            raise Refused(RefusalReason.INVALID, f"larger than {MAX_REQUEST_BYTES} bytes")
        try:
            request = ProvisionRequest.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "payload"
            raise Refused(RefusalReason.INVALID, f"{where}: {first['msg']}"[:300]) from None
        now = time.monotonic()
        serial = normalize_serial(request.serial)
        if not self.claim_limits.allow(claim_id, now):
            raise Refused(RefusalReason.RATE_LIMITED, "too many requests for this claim")
        if not self.serial_limits.allow(f"{claim_id}:{serial}", now):
            raise Refused(RefusalReason.RATE_LIMITED, "too many requests for this serial")
        if not valid_signature(request, claim_id):
            raise Refused(RefusalReason.INVALID, "signature does not verify with identity_key")
        return request

    async def _identity(self, claim_id: str, request: ProvisionRequest) -> Granted:
        db = self.state.db
        claim = await store.get(db, claim_id)
        refusal = claim_refusal(claim, request.serial, datetime.now(UTC))
        if refusal is not None:
            raise Refused(refusal)
        assert claim is not None
        if not await store.first_use(db, claim_id, request.nonce):
            raise Refused(RefusalReason.REPLAYED)
        serial = normalize_serial(request.serial)
        for _ in range(3):  # a lost race reads the binding again
            binding = await store.binding(db, claim.tenant_id, serial)
            decision = binding_decision(binding, request.identity_key)
            if decision is Binding.MISMATCH:
                raise Refused(RefusalReason.IDENTITY_MISMATCH)
            if decision is Binding.NEW:
                granted = await self._new_device(claim, serial, request)
            else:
                assert binding is not None
                granted = await self._again(claim, binding, decision, request)
            if granted is not None:
                return granted
        raise Refused(RefusalReason.UNAVAILABLE, "the serial is being provisioned right now")

    async def _new_device(
        self, claim: ClaimDoc, serial: str, request: ProvisionRequest
    ) -> Granted | None:
        """Take a slot, bind the serial, register the device; None if another request
        bound the serial first (its slot is given back)."""
        db = self.state.db
        slot = None
        if claim.device_limit is not None:
            slot = await store.take_slot(db, claim.id, claim.device_limit, serial)
            if slot is None:
                raise Refused(RefusalReason.OVER_LIMIT)
        binding = SerialBindingDoc(
            id=store.binding_id(claim.tenant_id, serial),
            tenant_id=claim.tenant_id,
            serial=serial,
            device_id=f"dev-{secrets.token_hex(8)}",
            claim_id=claim.id,
            identity_key=request.identity_key,
            bound_at=datetime.now(UTC),
        )
        if not await store.bind(db, binding):
            if slot is not None:
                await store.free_slot(db, slot)
            return None
        password = await self._register(claim, binding, request.hardware_model)
        return self._granted(claim, binding.device_id, password, "new")

    async def _again(
        self,
        claim: ClaimDoc,
        binding: SerialBindingDoc,
        decision: Binding,
        request: ProvisionRequest,
    ) -> Granted | None:
        """The bound device again, with a new password (rebinding this key first after
        an admin reset); None if another request rebound it meanwhile."""
        db = self.state.db
        if decision is Binding.REBIND and not await store.set_identity_key(
            db, binding, request.identity_key
        ):
            return None
        device = await device_store.get(db, claim.tenant_id, binding.device_id, live_only=False)
        if device is not None and device.decommissioned_at is not None:
            raise Refused(RefusalReason.DECOMMISSIONED)
        if device is None:  # the request that bound it died before registering it
            password = await self._register(claim, binding, request.hardware_model)
        else:
            password = await self._rotate(claim, device)
        result = "rebind" if decision is Binding.REBIND else "repeat"
        return self._granted(claim, binding.device_id, password, result)

    def _granted(self, claim: ClaimDoc, device_id: str, password: str, result: str) -> Granted:
        signer = self.state.settings.signer()
        identity = Identity(
            device_id=device_id,
            username=device_id,
            client_id=device_id,
            password=password,
            broker_url=self.state.settings.device_broker_url,
            firmware_public_key=signer.public_text if signer else None,
            tenant_id=claim.tenant_id,
        )
        return Granted(identity, result)

    # ------------------------------------------------------------------ registry and broker

    def _who(self, claim: ClaimDoc) -> Principal:
        """The actor of what a claim does: audit entries and config history name it."""
        return Principal(f"claim:{claim.id}", claim.tenant_id, Role.OPERATOR)

    async def _register(
        self, claim: ClaimDoc, binding: SerialBindingDoc, hardware_model: str
    ) -> str:
        """What ``POST /devices`` does, for the claim: registry entry, broker account (the
        same role and ACL), the group's config retained, an audit entry."""
        state, who, device_id = self.state, self._who(claim), binding.device_id
        group = claim.group
        if group is not None and await groups.get(state.db, claim.tenant_id, group) is None:
            # deleted since the claim was made (it had no members then): no group
            self.log.warning("claim group gone", extra={"claim_id": claim.id, "group": group})
            group = None
        password = auth.new_device_password()
        now = datetime.now(UTC)
        doc = DeviceDoc(
            id=device_id,
            tenant_id=claim.tenant_id,
            hardware_model=hardware_model,
            group=group,
            tags=sorted(set(claim.tags)),
            created_at=now,
            credentials=Credentials(password_hash=auth.password_hash(password), rotated_at=now),
        )
        try:
            await device_store.insert(state.db, doc)
        except DuplicateKeyError:  # left by an attempt that died: take its place
            await device_store.delete(state.db, device_id)
            await device_store.insert(state.db, doc)
        try:
            await state.broker_admin.create_device(device_id, password)
        except BaseException:  # no account: no entry either, so the repeat registers it
            await device_store.delete(state.db, device_id)
            raise
        if group:
            await config_service.change_device(state, who, device_id, cause="provision")
        await audit.record(
            state.db,
            who,
            "device.provision",
            f"device:{device_id}",
            after={"serial": binding.serial, "claim": claim.id, "group": group},
        )
        return password

    async def _rotate(self, claim: ClaimDoc, device: DeviceDoc) -> str:
        """New credentials for a provisioned device, as ``POST .../credentials`` does."""
        state = self.state
        password = auth.new_device_password()
        await state.broker_admin.reset_device(device.id, password)  # also disconnects it
        fields = {
            "credentials": Credentials(
                password_hash=auth.password_hash(password), rotated_at=datetime.now(UTC)
            ).model_dump()
        }

        async def attempt() -> DeviceDoc | None:
            current = await device_store.get(state.db, claim.tenant_id, device.id)
            if current is None:
                raise Refused(RefusalReason.DECOMMISSIONED)
            more = {"key_epoch": current.key_epoch + 1}
            ok = await device_store.update_fields(state.db, current, fields | more)
            return current if ok else None

        await retrying(attempt, f"device {device.id!r}")
        fresh = await device_store.get(state.db, claim.tenant_id, device.id)
        if fresh is not None:
            await config_service.republish(state, fresh)
        await audit.record(state.db, self._who(claim), "device.reprovision", f"device:{device.id}")
        return password
