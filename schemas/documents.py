"""MongoDB collections and the fields each service owns. The one place they are named.

``devices`` (``_id`` = device id)
    api:        tenant_id, hardware_model, group, tags, created_at, decommissioned_at,
                credentials {password_hash, rotated_at}, overrides (config),
                desired_config {version, hash, updated_at}
    bridge:     presence {status: online|offline, reason, since, k}
                state {firmware, hardware_model, uptime_s, counters,
                       config {version, hash, status: applied|rejected, error},
                       k, updated_at}
                last_seen (time of the last accepted change)
    scheduler:  reconcile {attempts, last_at}
    ``k`` is :func:`order_key_str` of the message's ordering key: a fixed-width string, so
    "newer" is a plain ``$lt``/``$gt`` in a filter on both MongoDB and FerretDB.

``job_executions`` (``_id`` = :func:`execution_id`)
    scheduler:  tenant_id, rollout_id, job_id, device_id, wave, attempt, status
                (queued|in_progress|succeeded|failed|rejected|timed_out|canceled),
                created_at, sent_at, finished_at
    bridge:     report {status (device JobState), progress, reason, firmware, k, updated_at}

    scheduler (also): next_try_at (an offline device's queued execution waits until
                then), url_expires_at, fence (lease token of the sender)

``rollouts`` (``_id`` = the job id): see :mod:`schemas.rollouts`
    api:        tenant_id, the :class:`schemas.rollouts.RolloutSpec` fields, created_at,
                status (requests: paused, running, canceling)
    scheduler:  status (running, completed, aborted, canceled), progress
                (:class:`schemas.rollouts.RolloutProgress`)

``firmware`` (api): tenant_id, version, size, sha256, s3_key (object key in the firmware
    bucket), hardware_models. The scheduler reads size, sha256 and s3_key.

``scheduler_claims`` (scheduler): ``_id`` = ``job@scheduled-time`` claims and
    ``lease:<name>`` leases {holder, token (fencing), expires_at}.

``dead_letters``: rejected device messages, bounded (bridge).
"""

from __future__ import annotations

from schemas.protocol import OrderKey

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
BROKER_METRICS = "broker_metrics"


def order_key_str(key: OrderKey) -> str:
    """Fixed-width hex of (session, seq): string order equals key order."""
    return f"{key.session:014x}.{key.seq:014x}"


def execution_id(job_id: str, device_id: str) -> str:
    return f"{job_id}:{device_id}"
