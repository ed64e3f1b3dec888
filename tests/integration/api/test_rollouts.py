"""Rollout definitions: create, one active rollout per device, lifecycle, progress, dry run."""

from __future__ import annotations

import pytest

from api.auth import Role
from tests.integration.api.conftest import Api, scheduler_finished

pytestmark = pytest.mark.integration


async def test_rollout_lifecycle(api: Api, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    ids = [f"r{n}-{unique}" for n in range(5)]
    async with api.client(token) as http:
        for n, device_id in enumerate(ids):
            tags = ["canary"] if n < 2 else []
            r = await http.post(
                "/devices", json={"id": device_id, "hardware_model": "ap-1", "tags": tags}
            )
            assert r.status_code == 201
        fw = (
            await http.post("/firmware", json={"version": "3.1.0", "hardware_models": ["ap-1"]})
        ).json()
        spec = {
            "firmware": {"id": fw["id"], "version": "3.1.0"},
            "target": {"hardware_model": "ap-1"},
            "waves": {"kind": "fixed", "size": 2},
        }
        not_uploaded = await http.post("/rollouts", json=spec)
        assert not_uploaded.status_code == 422
        await http.put(f"/firmware/{fw['id']}/image", content=b"img")

        dry = (await http.post("/rollouts/dry-run", json=spec)).json()
        assert dry["targeted"] == 5
        assert [w["device_ids"] for w in dry["waves"]] == [
            sorted(ids)[0:2],
            sorted(ids)[2:4],
            sorted(ids)[4:],
        ]
        canary = await http.post("/rollouts", json={**spec, "target": {"tags": ["canary"]}})
        assert canary.status_code == 201
        rid = canary.json()["id"]
        overlap = await http.post("/rollouts", json=spec)
        assert overlap.status_code == 409
        assert rid in overlap.json()["detail"]

        assert (await http.post(f"/rollouts/{rid}/resume")).status_code == 409
        paused = await http.post(f"/rollouts/{rid}/pause")
        assert paused.json()["status"] == "paused"
        assert (await http.post(f"/rollouts/{rid}/resume")).json()["status"] == "running"

        await api.state.db["job_executions"].insert_many(
            [
                {
                    "_id": f"{rid}:{ids[0]}",
                    "tenant_id": f"t-{unique}",
                    "rollout_id": rid,
                    "device_id": ids[0],
                    "wave": 1,
                    "status": "succeeded",
                },
                {
                    "_id": f"{rid}:{ids[1]}",
                    "tenant_id": f"t-{unique}",
                    "rollout_id": rid,
                    "device_id": ids[1],
                    "wave": 1,
                    "status": "in_progress",
                },
            ]
        )
        progress = (await http.get(f"/rollouts/{rid}/progress")).json()
        assert progress["executions"] == {"succeeded": 1, "in_progress": 1}
        assert progress["waves"] == {"1": {"succeeded": 1, "in_progress": 1}}

        assert (await http.post(f"/rollouts/{rid}/cancel")).json()["status"] == "canceling"
        await scheduler_finished(api, rid, "canceled")
        assert (await http.post("/rollouts", json=spec)).status_code == 201
        listed = (await http.get("/rollouts")).json()["items"]
        assert len(listed) == 2
