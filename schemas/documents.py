"""MongoDB collections and the fields each service owns. The one place they are named.

``devices`` (``_id`` = device id)
    api:        tenant_id, hardware_model, group, tags, created_at, decommissioned_at,
                credentials {password_hash, rotated_at}, overrides (config patch, as
                JSON text: FerretDB refuses '.' in keys, as in the band key ``2.4GHz``),
                desired_config {version, hash, updated_at}, api_rev (new random value
                on every write of api fields: how a FerretDB read-back tells an undone
                write from a newer one, see api.store.devices.update_fields)
    bridge:     presence {status: online|offline, reason, since, k}
                state {firmware, hardware_model, uptime_s, counters,
                       config {version, hash, status: applied|rejected, error},
                       k, updated_at}
                last_seen (time of the last accepted change)
    scheduler:  nothing (its reconcile records live in ``scheduler_reconcile``)
    ``k`` is :func:`order_key_str` of the message's ordering key: a fixed-width string, so
    "newer" is a plain ``$lt``/``$gt`` in a filter on both MongoDB and FerretDB.

``job_executions`` (``_id`` = :func:`execution_id`)
    scheduler:  tenant_id, rollout_id, job_id, device_id, wave, attempt, status
                (queued|in_progress|succeeded|failed|rejected|timed_out|canceled),
                created_at, sent_at, finished_at. ``status`` stays ``queued`` while the
                device reports progress (see ``report.status``): it moves to
                ``in_progress`` when the device reported succeeded and the grace check
                runs, or straight to a final status.
    bridge:     report {status (device JobState), progress, reason, firmware, k, updated_at}

    scheduler (also): next_try_at (an offline device's queued execution waits until
                then), url_expires_at, fence (lease token of the sender)

``rollouts`` (``_id`` = the job id): see :mod:`schemas.rollouts`
    api:        tenant_id, the :class:`schemas.rollouts.RolloutSpec` fields, created_at,
                status (requests: paused, running, canceling)
    scheduler:  status (running, completed, aborted, canceled), progress
                (:class:`schemas.rollouts.RolloutProgress`)

``firmware`` (api): tenant_id, version, size, sha256, s3_key (object key in the firmware
    bucket), hardware_models, release_notes, status (pending until the image is
    uploaded, then ready), created_at, uploaded_at. The scheduler reads size, sha256 and
    s3_key.

api only: ``tenants`` (``_id`` = tenant id: name, created_at); ``api_tokens`` (``_id`` =
    sha256 of the token: token_id, tenant_id, role, name, created_at, created_by,
    revoked_at); ``groups`` (``_id`` = ``tenant:name``: tenant_id, name, template (JSON
    text), version, updated_at); ``device_configs`` (``_id`` =
    ``device:version:hash-prefix``: tenant_id, device_id, version, hash, config (JSON
    text), created_at, actor, cause; the newest N per device are kept); ``audit_log``
    (tenant_id, actor (token id), role, action, target, at, before/after (JSON text)).

``scheduler_claims`` (scheduler): ``_id`` = ``job@scheduled-time`` claims and
    ``lease:<name>:<token>`` leases {lease, token (fencing), holder, expires_at}.

``scheduler_reconcile`` (scheduler, ``_id`` = device id): version, attempts, last_at,
    reason of the last config re-publish. ``scheduler_notices`` (scheduler): one per
    mailed incident (``offline:<device>@<since>`` with recovered, ``rollout:<id>:<status>``).

``scheduler_sends`` (scheduler, insert-only exclusion of command sends):
    ``_id`` = ``<execution id>#<attempt>`` (first send) or ``...#r<token>`` (re-send after
    a takeover) {job_id, execution_id, attempt, token, holder, stamp, intent_at,
    published_at}.

FerretDB v1.24.2 (SQLite) applies concurrent updates of one document without isolation
(measured: lost ``$set``s, conditional updates both matching); only unique ``_id``
inserts are exclusive. Writers of the same document therefore lose updates there. The
bridge and the api read their ``devices`` writes back after
:func:`outpost.mongo.settle_delay` and resend the undone ones. The scheduler writes an
execution's status only at points where the device no longer reports on that attempt
(a final report, or a timeout), and never trusts a conditional update for exclusion;
see :mod:`scheduler.claims` and :mod:`scheduler.executor`.

``dead_letters``: rejected device messages, bounded (bridge).
"""

from __future__ import annotations

from typing import Any

from schemas.protocol import OrderKey
from schemas.rollouts import Target

DEVICES = "devices"
JOB_EXECUTIONS = "job_executions"
DEAD_LETTERS = "dead_letters"
TENANTS = "tenants"
API_TOKENS = "api_tokens"
GROUPS = "groups"
DEVICE_CONFIGS = "device_configs"
FIRMWARE = "firmware"
ROLLOUTS = "rollouts"
AUDIT_LOG = "audit_log"
SCHEDULER_CLAIMS = "scheduler_claims"
SCHEDULER_SENDS = "scheduler_sends"
SCHEDULER_RECONCILE = "scheduler_reconcile"
SCHEDULER_NOTICES = "scheduler_notices"
BROKER_METRICS = "broker_metrics"


def order_key_str(key: OrderKey) -> str:
    """Fixed-width hex of (session, seq): string order equals key order."""
    return f"{key.session:014x}.{key.seq:014x}"


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
