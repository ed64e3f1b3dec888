"""One admin flow written against the client generated from ``/openapi.json``.

``outpost_client`` does not exist in the repository: the test generates it (with
openapi-python-client) into a temporary folder, type-checks it together with this file
under ``mypy --strict``, then runs :func:`flow` against a real ``outpost api`` process.
So this file is what a user of the generated client writes, and it must compile against
today's document.
"""

from __future__ import annotations

import io

from outpost_client import AuthenticatedClient
from outpost_client.api.devices import get_config, register, set_overrides
from outpost_client.api.firmware import create_firmware, upload_image
from outpost_client.api.rollouts import create_rollout
from outpost_client.models import (
    Band,
    ConfigChange,
    DeviceConfigPublic,
    DeviceCreate,
    DeviceRegistered,
    FirmwareCreate,
    FirmwarePublic,
    FirmwareTarget,
    FixedWaves,
    OverridesUpdate,
    RadioPatch,
    RolloutPublic,
    RolloutSpec,
    RolloutStatus,
    Ssid,
    Target,
    WifiConfigPatch,
    WifiConfigPatchRadiosType0,
    Wpa2Psk,
    Wpa2PskPublic,
)
from outpost_client.types import File


def _radios() -> WifiConfigPatchRadiosType0:
    radios = WifiConfigPatchRadiosType0()
    radios[Band("2.4GHz").value] = RadioPatch(channel=6)
    return radios


def flow(client: AuthenticatedClient, device_id: str, image: bytes) -> RolloutPublic:
    """Register a device, set its config, upload firmware, create a rollout."""
    registered = register.sync(
        client=client, body=DeviceCreate(id=device_id, hardware_model="ap-typed")
    )
    assert isinstance(registered, DeviceRegistered), registered
    assert registered.credentials.password

    current = get_config.sync_detailed(device_id, client=client)
    assert isinstance(current.parsed, DeviceConfigPublic), current.parsed
    assert current.parsed.version == 0
    overrides = WifiConfigPatch(
        country="DE",
        radios=_radios(),
        ssids=[
            Ssid(
                name="Office",
                security=Wpa2Psk(passphrase="correct horse battery"),
                bands=[Band("2.4GHz")],
            )
        ],
    )
    changed = set_overrides.sync(
        device_id,
        client=client,
        body=OverridesUpdate(overrides=overrides),
        if_match=current.headers["etag"],
    )
    assert isinstance(changed, ConfigChange), changed
    assert changed.version == 1
    config = get_config.sync(device_id, client=client)
    assert isinstance(config, DeviceConfigPublic), config
    assert config.config is not None
    security = config.config.ssids[0].security
    assert isinstance(security, Wpa2PskPublic)
    assert security.passphrase_set

    firmware = create_firmware.sync(
        client=client, body=FirmwareCreate(version="4.2.0", hardware_models=["ap-typed"])
    )
    assert isinstance(firmware, FirmwarePublic), firmware
    uploaded = upload_image.sync(firmware.id, client=client, body=File(payload=io.BytesIO(image)))
    assert isinstance(uploaded, FirmwarePublic), uploaded
    assert uploaded.size == len(image)

    spec = RolloutSpec(
        firmware=FirmwareTarget(id=firmware.id, version=firmware.version),
        target=Target(device_ids=[device_id]),
        waves=FixedWaves(kind="fixed", size=1),
    )
    rollout = create_rollout.sync(client=client, body=spec)
    assert isinstance(rollout, RolloutPublic), rollout
    assert rollout.status in (RolloutStatus.RUNNING, RolloutStatus.SCHEDULED)
    return rollout
