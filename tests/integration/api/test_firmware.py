"""Firmware: streamed upload to the real S3 with bounded memory, duplicates, in-use delete."""

from __future__ import annotations

import hashlib
import logging
import tracemalloc

import pytest

from api.auth import Role
from outpost import signing
from schemas.firmware import FirmwareManifest
from tests.integration.api.conftest import Api, scheduler_finished

pytestmark = pytest.mark.integration
IMAGE_BYTES = 20 * 1024 * 1024
CHUNK = 64 * 1024


def image_chunks(total: int):
    """Deterministic pseudo-random bytes, produced chunk by chunk (never whole in memory)."""
    block = hashlib.sha256(b"seed").digest() * (CHUNK // 32)
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        yield bytes((b + sent // CHUNK) % 256 for b in block[:8]) + block[8:n]
        sent += n


def expected_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for chunk in image_chunks(total):
        digest.update(chunk)
    return digest.hexdigest()


async def astream(total: int):
    for chunk in image_chunks(total):
        yield chunk


async def test_20mb_upload_streams_with_bounded_memory(api: Api, s3, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        created = await http.post(
            "/firmware",
            json={"version": "1.2.3", "hardware_models": ["ap-1"], "release_notes": "fixes"},
        )
        assert created.status_code == 201, created.text
        fw = created.json()
        assert fw["status"] == "pending"
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            uploaded = await http.put(
                f"/firmware/{fw['id']}/image",
                content=astream(IMAGE_BYTES),
                headers={"content-type": "application/octet-stream"},
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert uploaded.status_code == 200, uploaded.text
        body = uploaded.json()
        assert body["size"] == IMAGE_BYTES
        assert body["sha256"] == expected_sha256(IMAGE_BYTES)
        growth = peak - base
        logging.getLogger(__name__).warning(
            "upload of %d bytes: traced peak growth %d bytes", IMAGE_BYTES, growth
        )
        assert growth < IMAGE_BYTES // 4, f"peak {growth} bytes for a {IMAGE_BYTES} image"

        key = f"firmware/t-{unique}/{fw['id']}"
        obj = s3.client().get_object(Bucket=s3.bucket, Key=key)
        digest = hashlib.sha256()
        for part in obj["Body"].iter_chunks(1024 * 1024):
            digest.update(part)
        assert digest.hexdigest() == body["sha256"]

        again = await http.put(f"/firmware/{fw['id']}/image", content=b"x")
        assert again.status_code == 409


async def test_duplicate_version_and_delete_in_use(api: Api, s3, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        fw = (
            await http.post(
                "/firmware", json={"version": "2.0.0", "hardware_models": ["ap-1", "ap-2"]}
            )
        ).json()
        dup = await http.post("/firmware", json={"version": "2.0.0", "hardware_models": ["ap-2"]})
        assert dup.status_code == 409
        other_model = await http.post(
            "/firmware", json={"version": "2.0.0", "hardware_models": ["ap-3"]}
        )
        assert other_model.status_code == 201
        bad = await http.post("/firmware", json={"version": "2.0", "hardware_models": ["x"]})
        assert bad.status_code == 422
        up = await http.put(f"/firmware/{fw['id']}/image", content=b"\x00" * 1000)
        assert up.status_code == 200
        assert up.json()["size"] == 1000

        await http.post("/devices", json={"id": f"f-{unique}", "hardware_model": "ap-1"})
        rollout = await http.post(
            "/rollouts",
            json={
                "firmware": {"id": fw["id"], "version": "2.0.0"},
                "target": {"device_ids": [f"f-{unique}"]},
                "waves": {"kind": "fixed", "size": 1},
            },
        )
        assert rollout.status_code == 201, rollout.text
        in_use = await http.delete(f"/firmware/{fw['id']}")
        assert in_use.status_code == 409
        assert in_use.headers["content-type"] == "application/problem+json"

        rid = rollout.json()["id"]
        assert (await http.post(f"/rollouts/{rid}/cancel")).status_code == 200
        # canceling is still active until the scheduler finishes it
        assert (await http.delete(f"/firmware/{fw['id']}")).status_code == 409
        await scheduler_finished(api, rid, "canceled")
        assert (await http.delete(f"/firmware/{fw['id']}")).status_code == 204
        assert (await http.get(f"/firmware/{fw['id']}")).status_code == 404
        listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"firmware/t-{unique}/")
        assert fw["id"] not in str(listed.get("Contents", []))


async def test_image_over_the_limit_is_413_and_nothing_is_kept(broker, mongo, s3, unique):
    from api.app import create_app
    from tests.integration.api.conftest import api_settings

    database = f"fl_{unique}"
    app = create_app(api_settings(broker, mongo, s3, database, max_firmware_bytes=6 * 2**20))
    async with app.router.lifespan_context(app) as state:
        api = Api(app, state["app"])
        try:
            token = await api.token(f"t-{unique}", Role.OPERATOR)
            async with api.client(token) as http:
                fw = (
                    await http.post(
                        "/firmware", json={"version": "1.0.0", "hardware_models": ["m"]}
                    )
                ).json()
                big = await http.put(f"/firmware/{fw['id']}/image", content=astream(7 * 2**20))
                assert big.status_code == 413
                assert big.headers["content-type"] == "application/problem+json"
                assert (await http.get(f"/firmware/{fw['id']}")).json()["status"] == "pending"
                uploads = s3.client().list_multipart_uploads(
                    Bucket=s3.bucket, Prefix=f"firmware/t-{unique}/"
                )
                assert uploads.get("Uploads", []) == []
                ok = await http.put(f"/firmware/{fw['id']}/image", content=astream(1000))
                assert ok.status_code == 200
        finally:
            await api.state.db.db.client.drop_database(database)


async def test_upload_signs_the_manifest_devices_verify(api: Api, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        registered = await http.post("/devices", json={"id": f"s-{unique}", "hardware_model": "m2"})
        public_key = registered.json()["credentials"]["firmware_public_key"]
        fw = (
            await http.post("/firmware", json={"version": "3.1.0", "hardware_models": ["m2", "m1"]})
        ).json()
        image = b"\x7fsigned image" * 100
        body = (await http.put(f"/firmware/{fw['id']}/image", content=image)).json()
    manifest = FirmwareManifest(
        version="3.1.0",
        size=len(image),
        sha256=hashlib.sha256(image).hexdigest(),
        hardware_models=("m1", "m2"),
    )
    assert signing.verify(public_key, manifest, body["signature"])
    tampered = manifest.model_copy(update={"size": len(image) + 1})
    assert not signing.verify(public_key, tampered, body["signature"])
    other_key = signing.SigningKey(signing.new_private_key()).public_text
    assert not signing.verify(other_key, manifest, body["signature"])


async def test_without_a_signing_key_uploads_are_refused(broker, mongo, s3, unique):
    from api.app import create_app
    from tests.integration.api.conftest import api_settings

    database = f"fk_{unique}"
    app = create_app(api_settings(broker, mongo, s3, database, firmware_signing_key=None))
    async with app.router.lifespan_context(app) as state:
        api = Api(app, state["app"])
        try:
            token = await api.token(f"t-{unique}", Role.OPERATOR)
            async with api.client(token) as http:
                fw = (
                    await http.post(
                        "/firmware", json={"version": "1.0.0", "hardware_models": ["m"]}
                    )
                ).json()
                refused = await http.put(f"/firmware/{fw['id']}/image", content=b"image")
                assert refused.status_code == 503
                assert refused.headers["content-type"] == "application/problem+json"
                assert "OUTPOST_API_FIRMWARE_SIGNING_KEY" in refused.json()["detail"]
                assert (await http.get(f"/firmware/{fw['id']}")).json()["status"] == "pending"
        finally:
            await api.state.db.db.client.drop_database(database)
