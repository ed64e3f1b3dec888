"""Pure logic of the api: tokens, cursors, config rendering, sync reasons, waves,
dynamic-security commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api import auth, broker_admin, pagination
from api.config_render import check_patch, render
from api.config_service import plan
from api.errors import BrokerError, Conflict, InvalidInput
from api.routes.rollouts import dry_run_waves
from api.store.devices import DeviceFilter, DeviceView
from api.sync import SyncReason, sync_state
from schemas.documents import DeviceDoc, DevicePresenceDoc, DeviceStatusDoc, PresenceDoc
from schemas.rollouts import RolloutSpec

US6 = {"country": "US", "radios": {"2.4GHz": {"channel": 6}}}


def test_roles_rank():
    assert auth.Role.ADMIN.allows(auth.Role.OPERATOR)
    assert not auth.Role.VIEWER.allows(auth.Role.OPERATOR)


def test_token_is_random_hashed_and_parsed():
    one, two = auth.new_token(), auth.new_token()
    assert one.secret != two.secret
    assert one.hash == auth.token_hash(one.secret)
    assert one.secret not in one.hash
    assert auth.bearer(f"Bearer {one.secret}") == one.secret
    assert auth.bearer(f"Basic {one.secret}") is None
    assert auth.bearer("Bearer something-else") is None
    assert auth.bearer(None) is None


@pytest.mark.parametrize("value", ["x-y", datetime(2026, 1, 2, tzinfo=UTC), 7, None])
def test_cursor_round_trip(value):
    cursor = pagination.encode_cursor(value, "id-1")
    assert pagination.decode_cursor(cursor) == (value, "id-1")


@pytest.mark.parametrize("garbage", ["", "!!!", "bm90IGpzb24", "WzEsMl0"])
def test_bad_cursor_is_invalid_input(garbage):
    with pytest.raises(InvalidInput):
        pagination.decode_cursor(garbage)


def test_after_filter_orders_by_field_then_id():
    sort = pagination.Sort("created_at", descending=True)
    cursor = pagination.encode_cursor(5, "b")
    assert pagination.after_filter(sort, cursor) == {
        "$or": [{"created_at": {"$lt": 5}}, {"created_at": 5, "_id": {"$lt": "b"}}]
    }
    assert pagination.sort_spec(sort) == [("created_at", -1), ("_id", -1)]
    with pytest.raises(InvalidInput):
        pagination.Sort.parse("secret", {"id": "_id"})


def test_render_merges_and_hashes_canonically():
    a = render({"country": "US", "radios": {"2.4GHz": {}}}, {"radios": {"2.4GHz": {"channel": 6}}})
    b = render({"radios": {"2.4GHz": {"channel": 6}}, "country": "US"}, {})
    assert a is not None
    assert b is not None
    assert a.hash == b.hash
    assert a.config["radios"]["2.4GHz"]["channel"] == 6
    assert render({}, {}) is None


def test_render_refuses_invalid_with_reason():
    with pytest.raises(InvalidInput, match="channel 14"):
        render({"country": "DE"}, {"radios": {"2.4GHz": {"channel": 14}}})
    with pytest.raises(InvalidInput):
        check_patch({"x": "y" * 70_000}, "template")


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _device(pointer: dict | None = None) -> DeviceDoc:
    return DeviceDoc(
        id="d1", tenant_id="t", hardware_model="ap", created_at=T0, desired_config=pointer
    )


def test_plan_is_a_noop_when_the_hash_is_unchanged():
    first = plan(_device(), US6)
    assert first is not None
    assert first.version == 1
    current = _device({"version": 1, "hash": first.rendered.hash, "updated_at": T0})
    assert plan(current, US6) is None
    second = plan(current, {**US6, "radios": {"2.4GHz": {"channel": 1}}})
    assert second is not None
    assert second.version == 2


def _status(config: dict | None = None) -> DeviceStatusDoc:
    state = None
    if config is not None:
        state = {
            "firmware": "1",
            "hardware_model": "ap",
            "config": config,
            "h": "h",
            "k": "k",
            "updated_at": T0,
        }
    return DeviceStatusDoc(id="d1", state=state)


DESIRED_2 = {"version": 2, "hash": "x", "updated_at": T0}


@pytest.mark.parametrize(
    ("pointer", "status", "online", "reason"),
    [
        (None, None, False, SyncReason.NO_CONFIG),
        (DESIRED_2, _status({"version": 2, "status": "applied"}), False, SyncReason.IN_SYNC),
        (
            DESIRED_2,
            _status({"version": 2, "status": "rejected", "error": "e"}),
            True,
            SyncReason.REJECTED,
        ),
        (DESIRED_2, _status({"version": 1, "status": "applied"}), True, SyncReason.NOT_ACKED),
        (DESIRED_2, _status(), False, SyncReason.OFFLINE),
        (DESIRED_2, None, False, SyncReason.OFFLINE),
        (DESIRED_2, None, True, SyncReason.NOT_ACKED),  # online, no state yet
    ],
)
def test_sync_reason(pointer, status, online, reason):
    assert sync_state(_device(pointer), status, online).reason is reason


def test_device_view_joins_presence_and_state_from_their_own_documents():
    """Presence comes from ``device_presence``, state from ``device_status``; last seen is
    the newer of the two documents' (each written by its own channel)."""
    later = T0 + timedelta(seconds=30)
    status = DeviceStatusDoc(id="d1", state=None, last_seen=T0)
    present = DevicePresenceDoc(
        id="d1", presence=PresenceDoc(status="online", since=later, k="k"), last_seen=later
    )
    view = DeviceView(_device(), status, present)
    assert (view.presence, view.online, view.last_seen) == ("online", True, later)
    assert DeviceView(_device(), status, None).last_seen == T0
    assert DeviceView(_device(), None, None).presence is None
    assert (
        DeviceView(_device(), None, present, epoch=later + timedelta(seconds=1)).presence
        == "unknown"
    )
    flt = DeviceFilter(online=True, last_seen_after=T0)
    assert flt.keeps(view)
    assert not flt.keeps(DeviceView(_device(), status, None))


def full_spec(**extra) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {
            "firmware": {"id": "f1", "version": "1.0.0"},
            "target": {"tags": ["b", "a"], "device_ids": ["dev-2", "dev-1"]},
            "waves": {"kind": "fixed", "size": 4},
            "success": {"min_success_percent": 90, "wait": 600, "on_miss": "abort"},
            "in_progress_timeout": 120,
            "grace_period": 30,
            "schedule": {
                "start_at": "2030-01-01T00:00:00Z",
                "windows": [
                    {
                        "days": ["mon", "tue"],
                        "start": "22:00",
                        "end": "04:00",
                        "timezone": "Europe/Berlin",
                    }
                ],
            },
            **extra,
        }
    )


def test_stored_rollout_reads_back_as_the_same_spec():
    spec = full_spec()
    assert RolloutSpec.model_validate(spec.to_document()) == spec


def test_dry_run_uses_the_scheduler_wave_sizes():
    ids = [f"d{n:02d}" for n in range(10)]
    now = datetime(2029, 1, 1, tzinfo=UTC)
    waves = dry_run_waves(full_spec(max_per_minute=4), ids, now)
    assert [w.device_ids for w in waves] == [ids[0:4], ids[4:8], ids[8:10]]
    assert waves[0].earliest_start == datetime(2030, 1, 1, tzinfo=UTC)
    assert waves[1].earliest_start == datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
    exp = full_spec(
        waves={
            "kind": "exponential",
            "base_rate_per_minute": 1,
            "increment_factor": 2,
            "notified_devices": 2,
        }
    )
    assert sum(len(w.device_ids) for w in dry_run_waves(exp, ids, now)) == 10


def test_dynsec_commands_grant_each_own_channel_in_one_direction():
    create = broker_admin.create_device_commands("ap-1", "pw")
    role, client, listener = create
    grants = {(a["acltype"], a["topic"]) for a in role["acls"]}
    assert grants == {
        ("publishClientSend", "devices/ap-1/presence"),
        ("publishClientSend", "devices/ap-1/state"),
        ("publishClientSend", "devices/ap-1/jobs/+/status"),
        ("publishClientSend", "devices/ap-1/commands/+/result"),
        ("subscribePattern", "devices/ap-1/config"),
        ("publishClientReceive", "devices/ap-1/config"),
        ("subscribePattern", "devices/ap-1/jobs/+"),
        ("publishClientReceive", "devices/ap-1/jobs/+"),
        ("subscribePattern", "devices/ap-1/commands/+"),
        ("publishClientReceive", "devices/ap-1/commands/+"),
    }
    assert all(a["allow"] for a in role["acls"])
    assert client["username"] == client["clientid"] == "ap-1"
    assert client["roles"] == [{"rolename": role["rolename"]}]
    # a second account for a device that listens on its own connection (a shell script)
    assert listener["username"] == listener["clientid"] == "ap-1/listen"
    assert listener["password"] == client["password"]
    assert listener["roles"] == client["roles"]


class FakeChannel:
    def __init__(self, errors):
        self.errors = errors

    async def control(self, commands):
        return [
            {"command": c["command"], **({"error": e} if e else {})}
            for c, e in zip(commands, self.errors, strict=True)
        ]


async def test_broker_admin_maps_errors():
    admin = broker_admin.BrokerAdmin
    await admin(FakeChannel(["Role already exists", None, None])).create_device("ap-1", "pw")
    with pytest.raises(Conflict):
        await admin(FakeChannel([None, None, "Client already exists"])).create_device(
            "ap-1", "pw", replace_stale=False
        )
    with pytest.raises(BrokerError):
        await admin(FakeChannel(["Internal error", None, None])).create_device("ap-1", "pw")
    await admin(
        FakeChannel(["Client not found", "Client not found", "Role not found"])
    ).delete_device("ap-1")
    older = ["Role not found", "Client not found", "Role not found", None, None, None, None]
    await admin(FakeChannel(older)).reset_device("ap-1", "pw")
    with pytest.raises(BrokerError):
        await admin(
            FakeChannel([None, None, None, None, None, "Client not found", None])
        ).reset_device("ap-1", "pw")


def test_a_reset_takes_the_role_off_its_clients_before_deleting_it():
    commands = [c["command"] for c in broker_admin.reset_device_commands("ap-1", "pw")]
    assert commands.index("removeClientRole") < commands.index("deleteRole")
    assert commands.index("deleteClient") < commands.index("deleteRole")


class ScriptedChannel:
    """Answers each control call with the next scripted list of errors."""

    def __init__(self, *script):
        self.script = list(script)
        self.sent = []

    async def control(self, commands):
        self.sent.append([c["command"] for c in commands])
        errors = self.script.pop(0)
        return [
            {"command": c["command"], **({"error": e} if e else {})}
            for c, e in zip(commands, errors, strict=True)
        ]


async def test_stale_broker_account_is_replaced_once():
    channel = ScriptedChannel(
        ["Role already exists", "Client already exists", "Client already exists"],
        [None, None, None],
        ["Role already exists", None, None],
    )
    await broker_admin.BrokerAdmin(channel).create_device("ap-1", "pw")
    assert channel.sent == [
        ["createRole", "createClient", "createClient"],
        ["deleteClient", "deleteClient", "deleteRole"],
        ["createRole", "createClient", "createClient"],
    ]


# -- issue 12: If-Match, audit redaction ----------------------------------------------


@pytest.mark.parametrize(("value", "version"), [('"3"', 3), ("3", 3), ("*", None), (None, None)])
def test_if_match_reads_strong_tags(value, version):
    from api.routes.devices import parse_if_match

    assert parse_if_match(value) == version


def test_if_match_weak_never_matches_and_junk_is_422():
    from api.errors import InvalidInput, PreconditionFailed
    from api.routes.devices import parse_if_match

    with pytest.raises(PreconditionFailed):
        parse_if_match('W/"3"')
    for junk in ('"abc"', '"1' + "0" * 13 + '"', "١٢"):
        with pytest.raises(InvalidInput):
            parse_if_match(junk)


def test_audit_summaries_never_hold_a_secret():
    from api.store.audit import _summary

    text = _summary(
        {"ssids": [{"security": {"passphrase": "hunter22", "radius": [{"secret": "x"}]}}]}
    )
    assert text is not None
    assert "hunter22" not in text
    assert '"passphrase_set":true' in text
    assert '"secret_set":true' in text
