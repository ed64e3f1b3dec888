"""The reference agent against the real broker and the real S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from deploy.local import Mosquitto, S3Server
from device.behaviour import ConfigRejected
from outpost.signing import SigningKey, new_private_key
from schemas.examples import example_wifi_config
from schemas.protocol import (
    WILL_SEQ,
    ConfigMessage,
    FirmwareRef,
    JobCommand,
    encode,
)

from .agents import (
    FIRMWARE_SIGNER,
    agent_config,
    start_process_agent,
    start_thread_agent,
    stop_process,
)
from .conftest import backend_client

pytestmark = pytest.mark.integration


@pytest.fixture
def device_id(unique: str) -> str:
    return f"ap-{unique}"


@pytest.fixture
async def device_password(registry, device_id: str) -> str:
    """The agent's own broker account, from its registration through the api."""
    return (await registry.register([device_id]))[device_id]


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "agent-state.json"


@pytest.fixture
def cleanup() -> Iterator[list]:
    """Things to close after the test (thread agents, processes), newest first."""
    items: list = []
    yield items
    for item in reversed(items):
        if hasattr(item, "poll"):
            stop_process(item)
        else:
            item.close()


def is_presence(status: str, reason: str | None = None):
    def check(m) -> bool:
        return (
            m.topic.endswith("/presence")
            and m.payload.get("status") == status
            and (reason is None or m.payload.get("reason") == reason)
        )

    return check


async def publish(broker: Mosquitto, topic: str, payload: bytes, *, retain: bool = False):
    async with backend_client(broker) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


async def retained(broker: Mosquitto, topic: str) -> aiomqtt.Message:
    async with backend_client(broker) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                return message
    raise AssertionError("no retained message")


# ------------------------------------------------------------------------------ presence


async def test_killed_agent_will_is_retained_offline(
    broker, watch, device_id, device_password, state_file, cleanup
):
    watcher = await watch(f"devices/{device_id}/#")
    proc = start_process_agent(broker, device_id, device_password, state_file)
    cleanup.append(proc)
    online = await watcher.wait_for(is_presence("online"), within=20)
    assert online[0].payload["key"] == {"session": 1, "seq": 1}
    await watcher.wait_for(lambda m: m.topic.endswith("/state"))

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    will = (await watcher.wait_for(is_presence("offline", "connection_lost"), within=20))[0]
    assert will.payload["key"] == {"session": 1, "seq": WILL_SEQ}

    stored = await retained(broker, f"devices/{device_id}/presence")
    assert stored.retain
    assert json.loads(stored.payload)["reason"] == "connection_lost"
    assert json.loads(stored.payload)["status"] == "offline"
    assert json.loads(state_file.read_text())["session"] == 1


async def test_sigterm_says_goodbye_with_the_will_key(
    broker, watch, device_id, device_password, state_file, cleanup
):
    watcher = await watch(f"devices/{device_id}/#")
    proc = start_process_agent(broker, device_id, device_password, state_file)
    cleanup.append(proc)
    await watcher.wait_for(is_presence("online"), within=20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    bye = (await watcher.wait_for(is_presence("offline")))[0]
    assert bye.payload["reason"] == "shutdown"
    assert bye.payload["key"] == {"session": 1, "seq": WILL_SEQ}
    assert watcher.messages[-1].payload.get("reason") != "connection_lost"


# -------------------------------------------------------------------------------- config


def config_message(version: int, management_vlan: int) -> ConfigMessage:
    config = example_wifi_config().model_copy(update={"management_vlan": management_vlan})
    return ConfigMessage.for_config(config, version=version)


def picky_apply(applied: list[ConfigMessage]):
    """Accepts management VLANs up to 1000, like a small access point might."""

    def apply(message: ConfigMessage) -> None:
        vlan = message.config.management_vlan
        if vlan is not None and vlan > 1000:
            raise ConfigRejected(f"management VLAN {vlan} not supported (max 1000)")
        applied.append(message)

    return apply


def reports_config(version: int, status: str):
    def check(m) -> bool:
        report = m.payload.get("config") or {}
        return (
            m.topic.endswith("/state")
            and report.get("version") == version
            and report.get("status") == status
        )

    return check


async def test_config_published_while_offline_is_applied_on_reconnect(
    broker, watch, device_id, device_password, state_file, cleanup
):
    watcher = await watch(f"devices/{device_id}/#")
    applied: list[ConfigMessage] = []
    config = agent_config(broker, device_id, device_password, state_file)
    first = start_thread_agent(config, apply_config=picky_apply(applied))
    cleanup.append(first)
    await watcher.wait_for(is_presence("online"))
    first.close()
    await watcher.wait_for(is_presence("offline", "shutdown"))

    desired = config_message(3, management_vlan=99)
    await publish(broker, f"devices/{device_id}/config", encode(desired), retain=True)

    second = start_thread_agent(config, apply_config=picky_apply(applied))
    cleanup.append(second)
    state = (await watcher.wait_for(reports_config(3, "applied")))[0]
    assert state.payload["config"]["hash"] == desired.hash
    assert state.payload["key"]["session"] == 2
    assert [m.version for m in applied] == [3]
    assert json.loads(state_file.read_text())["config"]["version"] == 3

    rejected = config_message(4, management_vlan=4000)
    await publish(broker, f"devices/{device_id}/config", encode(rejected), retain=True)
    state = (await watcher.wait_for(reports_config(4, "rejected")))[0]
    assert state.payload["config"]["error"] == "management VLAN 4000 not supported (max 1000)"
    assert [m.version for m in applied] == [3]

    await publish(broker, f"devices/{device_id}/config", b"{not json", retain=True)
    state = (
        await watcher.wait_for(
            lambda m: (
                m.topic.endswith("/state")
                and m.payload.get("counters", {}).get("config_invalid") == 1
            )
        )
    )[0]
    assert state.payload["config"]["version"] == 4  # the last real report stays
    second.close()
    await publish(broker, f"devices/{device_id}/config", b"", retain=True)  # clear


# -------------------------------------------------------------------------------- upgrade


def upload(s3: S3Server, key: str, body: bytes) -> str:
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key=key, Body=body)
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": s3.bucket, "Key": key}, ExpiresIn=600
    )


def job_command(
    job_id: str,
    url: str,
    body: bytes,
    *,
    sha256: str | None = None,
    version: str = "2.0.0",
    signer: SigningKey | None = FIRMWARE_SIGNER,
    allow_downgrade: bool = False,
) -> JobCommand:
    """An upgrade command as the scheduler sends it: manifest signed by ``signer``."""
    now = datetime.now(UTC)
    firmware = FirmwareRef(
        version=version,
        size=len(body),
        sha256=sha256 or hashlib.sha256(body).hexdigest(),
        url=url,
        url_expires_at=now + timedelta(minutes=10),
        hardware_models=("ref-ap",),
    )
    if signer is not None:
        firmware = firmware.model_copy(update={"signature": signer.sign(firmware.manifest())})
    return JobCommand(
        job_id=job_id, firmware=firmware, issued_at=now, allow_downgrade=allow_downgrade
    )


def job_statuses(watcher, job_id: str) -> list[dict]:
    return [m.payload for m in watcher.on(f"/jobs/{job_id}/status")]


def job_reached(job_id: str, status: str):
    return lambda m: (
        m.topic.endswith(f"/jobs/{job_id}/status") and m.payload.get("status") == status
    )


async def test_upgrade_job_downloads_from_s3_and_succeeds(
    broker, s3, watch, device_id, device_password, state_file, cleanup
):
    watcher = await watch(f"devices/{device_id}/#")
    image = secrets.token_bytes(300 * 1024)
    url = upload(s3, f"fw/{device_id}/2.0.0.bin", image)
    agent = start_thread_agent(agent_config(broker, device_id, device_password, state_file))
    cleanup.append(agent)
    await watcher.wait_for(is_presence("online"))

    job_id = f"job-{device_id}"
    await publish(
        broker, f"devices/{device_id}/jobs/{job_id}", encode(job_command(job_id, url, image))
    )
    done = (await watcher.wait_for(job_reached(job_id, "succeeded"), within=30))[0]
    assert done.payload["firmware"] == "2.0.0"
    steps = [p["status"] for p in job_statuses(watcher, job_id)]
    assert steps[0] == "queued"
    assert {"downloading", "installing", "rebooting"} <= set(steps)
    assert steps[-1] == "succeeded"
    keys = [(p["key"]["session"], p["key"]["seq"]) for p in job_statuses(watcher, job_id)]
    assert keys == sorted(keys)
    assert keys[-1][0] == keys[0][0] + 1  # success is reported by the rebooted session
    await watcher.wait_for(is_presence("offline", "reboot"))
    state = (
        await watcher.wait_for(
            lambda m: m.topic.endswith("/state") and m.payload["firmware"] == "2.0.0"
        )
    )[0]
    assert state.payload["key"]["session"] == keys[-1][0]
    assert not list(state_file.parent.glob("*.img"))  # the image does not linger


async def test_corrupted_image_fails_with_reason(
    broker, s3, watch, device_id, device_password, state_file, cleanup
):
    watcher = await watch(f"devices/{device_id}/#")
    image = secrets.token_bytes(100 * 1024)
    url = upload(s3, f"fw/{device_id}/bad.bin", image)
    agent = start_thread_agent(agent_config(broker, device_id, device_password, state_file))
    cleanup.append(agent)
    await watcher.wait_for(is_presence("online"))

    job_id = f"bad-{device_id}"
    wrong = hashlib.sha256(b"something else").hexdigest()
    await publish(
        broker,
        f"devices/{device_id}/jobs/{job_id}",
        encode(job_command(job_id, url, image, sha256=wrong)),
    )
    failed = (await watcher.wait_for(job_reached(job_id, "failed"), within=30))[0]
    assert failed.payload["reason"].startswith("sha256 mismatch")
    assert wrong in failed.payload["reason"]
    assert failed.payload["firmware"] == "1.0.0"
    assert json.loads(state_file.read_text())["firmware"] == "1.0.0"
    assert not [p for p in job_statuses(watcher, job_id) if p["status"] == "installing"]

    # a URL that was tampered with is refused by S3: failed with the HTTP status
    job_id = f"forged-{device_id}"
    await publish(
        broker,
        f"devices/{device_id}/jobs/{job_id}",
        encode(job_command(job_id, url.replace("Signature=", "Signature=0"), image)),
    )
    failed = (await watcher.wait_for(job_reached(job_id, "failed"), within=30))[0]
    assert failed.payload["reason"].startswith("HTTP 403")


async def test_untrusted_jobs_are_refused_before_any_download(
    broker, s3, watch, device_id, device_password, state_file, cleanup
):
    """Whoever can publish on the job topic (here: the backend account) still cannot make
    the agent fetch an image the api did not sign, nor go back a version unasked."""
    watcher = await watch(f"devices/{device_id}/#")
    genuine = secrets.token_bytes(64 * 1024)
    evil = secrets.token_bytes(64 * 1024)
    good_url = upload(s3, f"fw/{device_id}/genuine.bin", genuine)
    evil_url = upload(s3, f"fw/{device_id}/evil.bin", evil)
    agent = start_thread_agent(agent_config(broker, device_id, device_password, state_file))
    cleanup.append(agent)
    await watcher.wait_for(is_presence("online"))

    signed = job_command("x", good_url, genuine)
    swapped = signed.firmware.model_copy(
        update={"url": evil_url, "sha256": hashlib.sha256(evil).hexdigest()}
    )
    cases = {
        "unsigned": (job_command("x", evil_url, evil, signer=None), "unsigned firmware manifest"),
        "wrong-key": (
            job_command("x", evil_url, evil, signer=SigningKey(new_private_key())),
            "signature does not verify",
        ),
        "swapped-image": (signed.model_copy(update={"firmware": swapped}), "does not verify"),
        "replayed-older": (
            job_command("x", good_url, genuine, version="0.9.0"),
            "downgrade from 1.0.0 to 0.9.0 not allowed",
        ),
    }
    for name, (command, reason) in cases.items():
        job_id = f"{name}-{device_id}"[:64]
        command = command.model_copy(update={"job_id": job_id})
        await publish(broker, f"devices/{device_id}/jobs/{job_id}", encode(command))
        rejected = (await watcher.wait_for(job_reached(job_id, "rejected"), within=15))[0]
        assert reason in rejected.payload["reason"], name
        assert [p["status"] for p in job_statuses(watcher, job_id)] == ["rejected"], name
    assert json.loads(state_file.read_text())["firmware"] == "1.0.0"

    # the same older image, when the rollout allows a downgrade, installs
    job_id = f"allowed-{device_id}"
    command = job_command(job_id, good_url, genuine, version="0.9.0", allow_downgrade=True)
    await publish(broker, f"devices/{device_id}/jobs/{job_id}", encode(command))
    done = (await watcher.wait_for(job_reached(job_id, "succeeded"), within=30))[0]
    assert done.payload["firmware"] == "0.9.0"


async def test_reboot_mid_download_resumes_and_succeeds(
    broker, s3, watch, device_id, device_password, state_file, cleanup
):
    watcher = await watch(f"devices/{device_id}/#")
    image = secrets.token_bytes(1024 * 1024)
    url = upload(s3, f"fw/{device_id}/3.0.0.bin", image)
    slow = ("--max-download-rate", str(256 * 1024))
    proc = start_process_agent(broker, device_id, device_password, state_file, *slow)
    cleanup.append(proc)
    await watcher.wait_for(is_presence("online"), within=20)

    job_id = f"slow-{device_id}"
    await publish(
        broker,
        f"devices/{device_id}/jobs/{job_id}",
        encode(job_command(job_id, url, image, version="3.0.0")),
    )
    await watcher.wait_for(
        lambda m: job_reached(job_id, "downloading")(m) and m.payload.get("progress", 0) >= 30,
        within=20,
    )
    os.kill(proc.pid, signal.SIGKILL)  # power cut in the middle of the download
    proc.wait(10)
    before = job_statuses(watcher, job_id)
    killed_at = len(before)
    stored = json.loads(state_file.read_text())
    assert stored["job"]["status"] == "downloading"
    # where the power went: between 30 % and the end of the download
    assert {s["status"] for s in before} == {"queued", "downloading"}
    assert 30 <= max(s.get("progress") or 0 for s in before) < 100

    proc = start_process_agent(broker, device_id, device_password, state_file, *slow)
    cleanup.append(proc)
    await watcher.wait_for(job_reached(job_id, "succeeded"), within=30)
    after = job_statuses(watcher, job_id)[killed_at:]
    assert after[0]["status"] == "downloading"
    assert after[0]["progress"] >= 30  # resumed from the partial image, not from zero
    assert after[0]["key"]["session"] == 2
    assert after[-1]["firmware"] == "3.0.0"
    assert json.loads(state_file.read_text())["firmware"] == "3.0.0"


async def test_reboot_while_rebooting_reports_the_outcome(
    broker, watch, device_id, device_password, state_file, cleanup
):
    """A job on record as 'rebooting' is judged by the firmware the device boots into."""
    from device.behaviour import JobRecord
    from device.storage import AgentState, save_state
    from schemas.protocol import JobState

    record = JobRecord(
        job_id="j-reboot",
        target="4.0.0",
        size=1,
        sha256="0" * 64,
        url="http://127.0.0.1:9/x",
        previous="1.0.0",
        url_expires_at=datetime.now(UTC) + timedelta(minutes=5),
        status=JobState.REBOOTING,
        progress=100.0,
    )
    save_state(state_file, AgentState(session=7, firmware="1.0.0", job=record))
    watcher = await watch(f"devices/{device_id}/#")
    agent = start_thread_agent(agent_config(broker, device_id, device_password, state_file))
    cleanup.append(agent)
    failed = (await watcher.wait_for(job_reached("j-reboot", "failed")))[0]
    assert failed.payload["reason"] == "booted 1.0.0, expected 4.0.0"
    assert failed.payload["key"]["session"] == 8


async def test_agent_reconnects_after_the_broker_drops_it(
    broker, watch, device_id, device_password, state_file, cleanup
):
    """Another client taking over the client id makes the broker drop the agent."""
    watcher = await watch(f"devices/{device_id}/#")
    agent = start_thread_agent(agent_config(broker, device_id, device_password, state_file))
    cleanup.append(agent)
    await watcher.wait_for(is_presence("online"))
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=device_id,  # a second box with the same account
        password=device_password,
        identifier=device_id,
        protocol=aiomqtt.ProtocolVersion.V5,
    ):
        pass  # connecting with the agent's client id takes its session over
    back = await watcher.wait_for(
        lambda m: is_presence("online")(m) and m.payload["key"]["session"] >= 2, within=20
    )
    assert back[0].payload["key"]["seq"] == 1
    assert json.loads(state_file.read_text())["session"] >= 2
