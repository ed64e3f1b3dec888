"""MongoDB collections, who writes each one, and the typed shape of their documents.

The one place collections are named. Three rules keep the code correct on MongoDB and on
FerretDB v1 (which applies concurrent updates of one document without isolation, so two
writers of one document lose each other's changes):

1. **One writer per document.** Every collection below is written by exactly one service.
   What admins decide is the api's; what devices report is the bridge's, in documents of
   its own (``device_presence``, ``device_status``, ``job_reports``); what the scheduler
   decides is the scheduler's (``job_executions``, ``rollout_progress``, claims). Readers
   join in code.

   Inside the bridge the same reasoning goes one step further: the broker's shared
   subscription hands a device's channels to different instances, so each channel a
   device reports on has a document of its own. Presence (``device_presence``) and state
   (``device_status``) used to share one document, and on FerretDB two instances writing
   a device's presence and state at the same instant (online, then state, after a
   reboot) lost one of the two (bench/RESULTS.md, scale-out drill, finding 4). Two
   messages of the *same* channel at two instances at once write one document; on
   FerretDB the store orders them with write locks per bucket of documents (unique
   inserts into ``write_locks``, owned by the store module of whichever process writes:
   :mod:`outpost.store`; bridge/README.md, "Order").
2. **Exclusivity and compare-and-set through unique keys.** Claims, leases, send claims,
   and every api revision (``revisions``: ``<collection>:<id>:<rev>``) are inserts of a
   unique ``_id``; the insert that wins is the only writer of that revision.
3. **Conditional, idempotent writes** from the bridge, keyed by id and ordering key.

Who writes what
---------------
============================  ==========  ===============================================
collection                    writer      ``_id`` and content
============================  ==========  ===============================================
``devices``                   api         device id: :class:`DeviceDoc` (registry, desired
                                          config pointer, overrides, ``rev``)
``revisions``                 api         ``<collection>:<id>:<rev>``: the lock that makes
                                          one api request the writer of a revision
``device_configs``            api         ``<device>:<version>``: :class:`DeviceConfigDoc`
``groups``                    api         ``<tenant>:<name>``: :class:`GroupDoc`
``firmware``                  api         :class:`FirmwareDoc`
``rollouts``                  api         :class:`RolloutDoc` (spec and admin control)
``tenants``, ``api_tokens``,  api         :class:`TenantDoc`, :class:`ApiTokenDoc`,
``audit_log``                             :class:`AuditDoc`
``api_token_usage``           api         ``<tenant>:<token id>``: ``last_used_at`` (apart
                                          from the token: see :mod:`api.store.tenants`)
``rollout_devices``           api         device id: the active rollout that holds the
                                          device (:class:`RolloutDeviceDoc`; unique
                                          ``_id``: one active rollout per device)
``provisioning_claims``       api         claim id: :class:`ClaimDoc` (secret as sha256)
``claim_slots``               api         ``<claim>:<n>``: slot ``n`` of a claim's device
                                          limit (a unique insert per provisioned device)
``serial_bindings``           api         ``<tenant>:<serial>``: :class:`SerialBindingDoc`,
                                          the device and identity key a serial is bound to
``provision_nonces``          api         ``<claim>:<nonce>``: a request answered once
``device_presence``           bridge      device id: :class:`DevicePresenceDoc` (presence,
                                          last seen of presence messages)
``device_status``             bridge      device id: :class:`DeviceStatusDoc` (reported
                                          state, config ack, last seen of state messages)
``job_reports``               bridge      execution id: :class:`JobReportDoc`
``dead_letters``              bridge      ``<reason>:<slot>``: :class:`DeadLetterDoc`
``broker_epochs``             bridge      ``start:<time>``: :class:`BrokerEpochDoc`, a broker
                                          start (or lost session) the bridge saw; presence
                                          older than the latest is not vouched for
``job_executions``            scheduler   execution id: :class:`JobExecutionDoc`
``rollout_progress``          scheduler   rollout id: :class:`RolloutProgressDoc`
``scheduler_claims``,         scheduler   claims, leases, send claims, reconcile records,
``scheduler_sends``,                      mailed notices, ``$SYS`` snapshots
``scheduler_reconcile``,
``scheduler_notices``,
``broker_metrics``
``fleet_metrics``             scheduler   ``<slot>``: :class:`FleetMetricsDoc`, the fleet
                                          gauges computed by one instance per interval
``commands``                  api         command id: :class:`CommandDoc`, one device
                                          command an operator asked for
``command_bulks``             api         bulk id: :class:`CommandBulkDoc`, a command to a
                                          group or tag selection (one ``commands`` entry
                                          per device, sent by the scheduler)
``command_results``           bridge      command id: :class:`CommandResultDoc`, the
                                          device's one answer (unique ``_id``: the first
                                          wins, duplicates are ignored)
``command_sends``             scheduler   command id (``#r<token>`` for a re-send):
                                          :class:`CommandSendDoc`, the claim that makes
                                          one instance the sender of a group command
============================  ==========  ===============================================

Ordering keys are stored as :func:`order_key_str`: a fixed-width string, so "newer" is a
plain ``$lt``/``$gt`` in a filter on both servers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from schemas.protocol import OrderKey
from schemas.rollouts import (
    ExecutionStatus,
    RolloutControl,
    RolloutProgress,
    RolloutSpec,
    RolloutStatus,
    Target,
)

__all__ = [
    "API_TOKENS",
    "API_TOKEN_USAGE",
    "AUDIT_LOG",
    "BROKER_EPOCHS",
    "BROKER_METRICS",
    "CLAIMS",
    "CLAIM_SLOTS",
    "COMMANDS",
    "COMMAND_BULKS",
    "COMMAND_RESULTS",
    "COMMAND_SENDS",
    "DEAD_LETTERS",
    "DEVICES",
    "DEVICE_CONFIGS",
    "DEVICE_PRESENCE",
    "DEVICE_STATUS",
    "FIRMWARE",
    "FLEET_METRICS",
    "GROUPS",
    "JOB_EXECUTIONS",
    "JOB_REPORTS",
    "OWNERS",
    "PROVISION_NONCES",
    "REVISIONS",
    "ROLLOUTS",
    "ROLLOUT_DEVICES",
    "ROLLOUT_PROGRESS",
    "SCHEDULER_CLAIMS",
    "SCHEDULER_NOTICES",
    "SCHEDULER_RECONCILE",
    "SCHEDULER_SENDS",
    "SERIAL_BINDINGS",
    "TENANTS",
    "ApiTokenDoc",
    "AppliedConfig",
    "AuditDoc",
    "BrokerEpochDoc",
    "ClaimDoc",
    "CommandBulkDoc",
    "CommandDoc",
    "CommandResultDoc",
    "CommandSendDoc",
    "ConfigPointer",
    "Credentials",
    "DeadLetterDoc",
    "DeviceConfigDoc",
    "DeviceDoc",
    "DevicePresenceDoc",
    "DeviceStatusDoc",
    "FirmwareDoc",
    "FleetMetricsDoc",
    "FleetSample",
    "GroupDoc",
    "JobExecutionDoc",
    "JobReportDoc",
    "PresenceDoc",
    "ReportedState",
    "RolloutDeviceDoc",
    "RolloutDoc",
    "RolloutProgressDoc",
    "SerialBindingDoc",
    "TenantDoc",
    "device_config_id",
    "device_last_seen",
    "execution_id",
    "order_key_str",
    "presence_status",
    "target_filter",
    "to_json_text",
]

DEVICES = "devices"
REVISIONS = "revisions"
DEVICE_CONFIGS = "device_configs"
GROUPS = "groups"
FIRMWARE = "firmware"
ROLLOUTS = "rollouts"
TENANTS = "tenants"
API_TOKENS = "api_tokens"
API_TOKEN_USAGE = "api_token_usage"
ROLLOUT_DEVICES = "rollout_devices"
AUDIT_LOG = "audit_log"
DEVICE_PRESENCE = "device_presence"
DEVICE_STATUS = "device_status"
JOB_REPORTS = "job_reports"
DEAD_LETTERS = "dead_letters"
JOB_EXECUTIONS = "job_executions"
ROLLOUT_PROGRESS = "rollout_progress"
SCHEDULER_CLAIMS = "scheduler_claims"
SCHEDULER_SENDS = "scheduler_sends"
SCHEDULER_RECONCILE = "scheduler_reconcile"
SCHEDULER_NOTICES = "scheduler_notices"
BROKER_METRICS = "broker_metrics"
BROKER_EPOCHS = "broker_epochs"
FLEET_METRICS = "fleet_metrics"
CLAIMS = "provisioning_claims"
CLAIM_SLOTS = "claim_slots"
SERIAL_BINDINGS = "serial_bindings"
PROVISION_NONCES = "provision_nonces"
COMMANDS = "commands"
COMMAND_BULKS = "command_bulks"
COMMAND_RESULTS = "command_results"
COMMAND_SENDS = "command_sends"

Owner = Literal["api", "bridge", "scheduler"]
OWNERS: dict[str, Owner] = {
    DEVICES: "api",
    REVISIONS: "api",
    DEVICE_CONFIGS: "api",
    GROUPS: "api",
    FIRMWARE: "api",
    ROLLOUTS: "api",
    TENANTS: "api",
    API_TOKENS: "api",
    API_TOKEN_USAGE: "api",
    ROLLOUT_DEVICES: "api",
    AUDIT_LOG: "api",
    CLAIMS: "api",
    CLAIM_SLOTS: "api",
    SERIAL_BINDINGS: "api",
    PROVISION_NONCES: "api",
    DEVICE_PRESENCE: "bridge",
    DEVICE_STATUS: "bridge",
    JOB_REPORTS: "bridge",
    DEAD_LETTERS: "bridge",
    BROKER_EPOCHS: "bridge",
    JOB_EXECUTIONS: "scheduler",
    ROLLOUT_PROGRESS: "scheduler",
    SCHEDULER_CLAIMS: "scheduler",
    SCHEDULER_SENDS: "scheduler",
    SCHEDULER_RECONCILE: "scheduler",
    SCHEDULER_NOTICES: "scheduler",
    BROKER_METRICS: "scheduler",
    FLEET_METRICS: "scheduler",
    COMMANDS: "api",
    COMMAND_BULKS: "api",
    COMMAND_RESULTS: "bridge",
    COMMAND_SENDS: "scheduler",
}


def _from_json_text(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def to_json_text(value: dict[str, Any]) -> str:
    """How config objects are stored (see :data:`JsonText`)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# Config objects are stored as JSON text: FerretDB refuses '.' in keys (the WiFi band keys
# are ``2.4GHz``) and no server takes admin-chosen keys starting with '$'.
JsonText = Annotated[
    dict[str, Any], BeforeValidator(_from_json_text), PlainSerializer(to_json_text)
]


class _Doc(BaseModel):
    """A stored document: ``id`` is ``_id``; unknown fields (older layouts) are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    id: str = Field(alias="_id")

    def to_mongo(self) -> dict[str, Any]:
        """The document as stored (``_id``, JSON text fields serialized)."""
        return self.model_dump(by_alias=True, mode="python")


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


# -- api ---------------------------------------------------------------------------------


class ConfigPointer(_Part):
    """Which version of the config history is the device's desired config."""

    version: int
    hash: str
    updated_at: datetime


class Credentials(_Part):
    password_hash: str
    rotated_at: datetime


class DeviceDoc(_Doc):
    """``devices``: the registry entry of one device (api).

    ``rev`` grows by one on every api write (see :mod:`api.store.revisions`).
    """

    tenant_id: str
    hardware_model: str
    group: str | None = None
    tags: list[str] = Field(default_factory=list)
    overrides: JsonText = Field(default_factory=dict)
    created_at: datetime
    decommissioned_at: datetime | None = None
    credentials: Credentials | None = None
    desired_config: ConfigPointer | None = None
    key_epoch: int = Field(default=0, ge=0, lt=2**24)  # raised to reset ordering keys
    rev: int = 0


class DeviceConfigDoc(_Doc):
    """``device_configs``: one version of a device's rendered config (api).

    ``_id`` is ``<device>:<version>``, so two writers of the same version cannot both
    store it: the insert is the compare-and-set behind If-Match.
    """

    tenant_id: str
    device_id: str
    version: int
    hash: str
    config: JsonText
    created_at: datetime
    actor: str
    cause: str


class GroupDoc(_Doc):
    tenant_id: str
    name: str
    template: JsonText = Field(default_factory=dict)
    version: int = 1
    updated_at: datetime
    rev: int = 0


class FirmwareDoc(_Doc):
    tenant_id: str
    version: str
    hardware_models: list[str]
    release_notes: str = ""
    status: Literal["pending", "ready"] = "pending"
    s3_key: str
    size: int | None = None
    sha256: str | None = None
    signature: str | None = None  # Ed25519 over schemas.firmware.FirmwareManifest (api)
    created_at: datetime
    uploaded_at: datetime | None = None


class RolloutDoc(_Doc):
    """``rollouts``: what an admin decided (api). Progress lives in ``rollout_progress``."""

    tenant_id: str
    spec: RolloutSpec
    created_at: datetime
    created_by: str | None = None
    control: RolloutControl = Field(default_factory=RolloutControl)
    rev: int = 0

    def to_mongo(self) -> dict[str, Any]:
        doc = self.model_dump(by_alias=True, mode="python", exclude={"spec"})
        doc["spec"] = self.spec.to_document()
        return doc


class TenantDoc(_Doc):
    """``tenants``; ``rev``: token revocations are revisions of their tenant."""

    name: str
    created_at: datetime
    rev: int = 0


class ApiTokenDoc(_Doc):
    """``api_tokens`` (``_id`` = sha256 of the token)."""

    token_id: str
    tenant_id: str
    role: str
    name: str
    created_at: datetime
    created_by: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class ClaimDoc(_Doc):
    """``provisioning_claims``: a provisioning claim (api); ``_id`` is its public id.

    ``allow`` holds normalized serials (:func:`schemas.provisioning.normalize_serial`);
    None: any serial. Revoking sets ``revoked_at`` (and deletes the broker account)."""

    tenant_id: str
    name: str
    secret_hash: str
    allow: list[str] | None = None
    expires_at: datetime | None = None
    device_limit: int | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)
    created_at: datetime
    created_by: str | None = None
    revoked_at: datetime | None = None


class SerialBindingDoc(_Doc):
    """``serial_bindings`` (``<tenant>:<serial>``): which device a serial became, and the
    identity key that may ask for its credentials again (None after an admin reset: the
    next request binds its key). Inserting it is the compare-and-set of "one serial, one
    device"; changing the key is a revision."""

    tenant_id: str
    serial: str
    device_id: str
    claim_id: str
    identity_key: str | None
    bound_at: datetime
    rev: int = 0


class RolloutDeviceDoc(_Doc):
    """``rollout_devices`` (``_id`` = device id): the rollout that holds the device. The
    unique ``_id`` makes "one active rollout per device" an insert that only one rollout
    wins; a claim whose rollout is final is released by the next rollout that needs the
    device (:mod:`api.store.rollouts`)."""

    tenant_id: str
    rollout_id: str
    at: datetime


class AuditDoc(_Doc):
    tenant_id: str
    actor: str
    role: str
    action: str
    target: str
    at: datetime
    before: str | None = None
    after: str | None = None


class CommandDoc(_Doc):
    """``commands`` (``_id`` = command id): one command to one device (api).

    A single-device command is published by the api itself (``published_at``, or
    ``send_error`` when the broker refused it); a group command's (``bulk_id``) by the
    scheduler (``command_sends``). The presigned upload URL of a ``logs`` command is
    never stored, only the object ``logs_key`` it points at.
    """

    tenant_id: str
    device_id: str
    name: str
    args: JsonText = Field(default_factory=dict)
    created_at: datetime
    expires_at: datetime
    created_by: str | None = None
    bulk_id: str | None = None
    logs_key: str | None = None
    published_at: datetime | None = None
    send_error: str | None = None


class CommandBulkDoc(_Doc):
    """``command_bulks`` (``_id`` = bulk id): one command to many devices (api)."""

    tenant_id: str
    name: str
    args: JsonText = Field(default_factory=dict)
    target: JsonText = Field(default_factory=dict)
    devices: int
    max_per_minute: int
    created_at: datetime
    expires_at: datetime
    created_by: str | None = None


# -- bridge ------------------------------------------------------------------------------


class PresenceDoc(_Part):
    status: Literal["online", "offline"]
    reason: str | None = None
    since: datetime
    k: str


class AppliedConfig(_Part):
    """The device's report on the last desired config it received."""

    version: int
    hash: str | None = None
    status: Literal["applied", "rejected"]
    error: str | None = None


class ReportedState(_Part):
    firmware: str
    hardware_model: str
    uptime_s: int = 0
    counters: dict[str, int | float] = Field(default_factory=dict)
    config: AppliedConfig | None = None
    h: str = Field(description="Hash of the state's content (what it says, not when)")
    k: str
    updated_at: datetime


class DevicePresenceDoc(_Doc):
    """``device_presence`` (``_id`` = device id): the device's presence as the bridge
    stored it (bridge), written by presence messages only.

    Apart from :class:`DeviceStatusDoc` so that two bridge instances handling a device's
    presence and its state at the same instant write two documents: FerretDB v1 does not
    isolate concurrent updates of one document (see the module docstring). The same shape
    as before the split (``presence.*``), so filters such as ``{"presence.status":
    "online"}`` read as they did; ``last_seen`` is the receive time of the last presence
    message applied.
    """

    tenant_id: str | None = None
    presence: PresenceDoc | None = None
    last_seen: datetime | None = Field(
        default=None, description="Receive time of the last presence message the bridge applied"
    )


class DeviceStatusDoc(_Doc):
    """``device_status`` (``_id`` = device id): the device's reported state and config
    ack as the bridge stored them (bridge), written by state messages only. Presence is
    in :class:`DevicePresenceDoc`; documents written before the split may still hold a
    ``presence`` field, which nothing reads."""

    tenant_id: str | None = None
    state: ReportedState | None = None
    last_seen: datetime | None = Field(
        default=None, description="Receive time of the last state message the bridge applied"
    )


class BrokerEpochDoc(_Doc):
    """``broker_epochs``: a moment after which presence stored earlier is not vouched for.

    A broker killed (SIGKILL, a crash, a lost node) sends no Last Will, so a device that
    was online before it and has not reconnected since is shown as online in
    ``device_presence`` although nobody knows. The bridge records each broker start it sees
    (``$SYS/broker/uptime``: ``source="uptime"``) and each reconnect of its own that found
    its session gone (``source="session_lost"``); readers show "online" presence older
    than the latest epoch as "unknown" (:func:`presence_status`). Inserted once (unique
    ``_id``), never updated.
    """

    started_at: datetime = Field(description="The broker start (rounded down) or reconnect")
    source: Literal["uptime", "session_lost"]
    seen_by: str = Field(description="The bridge instance that recorded it")
    seen_at: datetime


class JobReportDoc(_Doc):
    """``job_reports`` (``_id`` = execution id): a device's latest status on a job (bridge)."""

    tenant_id: str | None = None
    job_id: str
    device_id: str
    status: str
    progress: float | None = None
    reason: str | None = None
    firmware: str | None = None
    k: str
    updated_at: datetime


class CommandResultDoc(_Doc):
    """``command_results`` (``_id`` = command id): the device's answer (bridge). Inserted
    once; a second answer is a duplicate and ignored."""

    tenant_id: str | None = None
    device_id: str
    name: str
    status: str
    output: JsonText = Field(default_factory=dict)
    error: str | None = None
    k: str
    received_at: datetime


class DeadLetterDoc(_Doc):
    reason: str
    detail: str
    topic: str
    size: int
    sample: str
    received_at: datetime


# -- scheduler ---------------------------------------------------------------------------


class LastFailure(_Part):
    status: ExecutionStatus
    reason: str


class JobExecutionDoc(_Doc):
    """``job_executions``: one device's execution of a rollout's job (scheduler).

    The device's own reports are in ``job_reports`` under the same ``_id``.
    """

    tenant_id: str | None = None
    rollout_id: str
    job_id: str
    device_id: str
    wave: int
    attempt: int = 1
    status: ExecutionStatus = ExecutionStatus.QUEUED
    reason: str | None = None
    created_at: datetime
    sent_at: datetime | None = None
    url_expires_at: datetime | None = None
    next_try_at: datetime | None = None
    tries: int = 0
    finished_at: datetime | None = None
    stale_k: str = Field(
        default="", description="Key of the last report of an earlier attempt (see executions)"
    )
    last_failure: LastFailure | None = None
    fence: int = 0


class RolloutProgressDoc(_Doc):
    """``rollout_progress`` (``_id`` = rollout id): the scheduler's view of a rollout."""

    tenant_id: str | None = None
    status: RolloutStatus
    progress: RolloutProgress = Field(default_factory=RolloutProgress)
    control_rev: str | None = Field(
        default=None, description="The admin control request this status answers"
    )
    settled: bool = Field(
        default=False, description="Final and nothing left to follow: no longer ticked"
    )
    updated_at: datetime


class FleetSample(_Part):
    """One gauge sample (label values are data, e.g. tenant ids: never field names)."""

    metric: str
    labels: dict[str, str] = Field(default_factory=dict)
    value: float


class FleetMetricsDoc(_Doc):
    """``fleet_metrics`` (``_id`` = the interval's slot, UTC ISO): what one scheduler
    instance computed for the fleet gauges; every instance exports the latest (scheduler,
    :mod:`scheduler.fleet_metrics`)."""

    at: datetime
    computed_by: str
    seconds: float = Field(description="How long the reads and the computation took")
    samples: list[FleetSample]


class CommandSendDoc(_Doc):
    """``command_sends``: the claim to publish one group command (scheduler).

    ``_id`` is the command id for the first send and ``<command id>#r<token>`` for the one
    re-send a later lease holder may make when the first was never confirmed.
    """

    command_id: str
    bulk_id: str
    token: int
    holder: str
    claimed_at: datetime
    published_at: datetime | None = None


# -- helpers -----------------------------------------------------------------------------


PresenceStatus = Literal["online", "offline", "unknown"]


def presence_status(
    presence: DevicePresenceDoc | None, epoch: datetime | None
) -> PresenceStatus | None:
    """What can be said of a device's presence (None: it never reported one).

    "online" stored before the latest broker epoch is "unknown": the broker that knew the
    session is gone and sent no Last Will. "offline" stays offline: a device that came
    back announces itself, which moves ``since`` past the epoch.
    """
    if presence is None or presence.presence is None:
        return None
    stored = presence.presence
    if stored.status == "online" and epoch is not None and _utc(stored.since) < _utc(epoch):
        return "unknown"
    return stored.status


def device_last_seen(
    presence: DevicePresenceDoc | None, status: DeviceStatusDoc | None
) -> datetime | None:
    """When the bridge last applied a message of the device: the newer of the two
    documents' ``last_seen`` (each is written by its own channel)."""
    seen = [_utc(d.last_seen) for d in (presence, status) if d is not None and d.last_seen]
    return max(seen, default=None)


def _utc(value: datetime) -> datetime:
    """Stored times are UTC; a client without ``tz_aware`` reads them naive."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def order_key_str(key: OrderKey, epoch: int = 0) -> str:
    """Fixed-width hex of (key epoch, session, seq): string order equals key order.

    The epoch is the device's ``key_epoch`` in the registry: an admin resets a device's
    ordering (a factory reset, a device without a clock) by raising it, and every key of
    the new epoch is newer than any stored key of an older one.
    """
    return f"{epoch:06x}:{key.session:014x}.{key.seq:014x}"


def device_config_id(device_id: str, version: int) -> str:
    """``device_configs`` ``_id``: one entry per device and version."""
    return f"{device_id}:{version:010d}"


def execution_id(job_id: str, device_id: str) -> str:
    return f"{job_id}:{device_id}"


def target_filter(tenant_id: str, target: Target) -> dict[str, Any]:
    """The ``devices`` filter for a rollout target (live devices of one tenant)."""
    query: dict[str, Any] = {"tenant_id": tenant_id, "decommissioned_at": None}
    if target.group:
        query["group"] = target.group
    if target.tags:
        query["tags"] = {"$all": sorted(target.tags)}
    if target.device_ids:
        query["_id"] = {"$in": sorted(target.device_ids)}
    if target.hardware_model:
        query["hardware_model"] = target.hardware_model
    return query
