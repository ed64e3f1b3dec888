"""OpenAPI links: how a response feeds the next request (created id -> read, change).

They make the document a map a client (or schemathesis' stateful phase) can follow:
register a device, then read it, its config, and change its overrides with the ETag the
config read returned. Operation ids are the route functions' names (``create_app``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LINKS", "add_links"]

_DEVICE = {"device_id": "$response.body#/device/id"}
_SAME_DEVICE = {"device_id": "$request.path.device_id"}
_GROUP = {"name": "$response.body#/name"}
_FIRMWARE = {"firmware_id": "$response.body#/id"}
_ROLLOUT = {"rollout_id": "$response.body#/id"}

# (path, method, status) -> {link name: (operation id, parameters)}
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, dict[str, str]]]] = {
    ("/devices", "post", "201"): {
        "GetDevice": ("get_device", _DEVICE),
        "GetConfig": ("get_config", _DEVICE),
        "UpdateDevice": ("update_device", _DEVICE),
        "ConfigHistory": ("config_history", _DEVICE),
        "RotateCredentials": ("rotate_credentials", _DEVICE),
    },
    ("/devices/{device_id}/config", "get", "200"): {
        "SetOverrides": (
            "set_overrides",
            {**_SAME_DEVICE, "header.If-Match": "$response.header.ETag"},
        ),
    },
    ("/devices/{device_id}/config/overrides", "put", "200"): {
        "GetConfigAfterChange": ("get_config", _SAME_DEVICE),
        "Rollback": (
            "rollback",
            {**_SAME_DEVICE, "header.If-Match": "$response.header.ETag"},
        ),
    },
    ("/groups", "post", "201"): {
        "GetGroup": ("get_group", _GROUP),
        "SetTemplate": (
            "set_template",
            {**_GROUP, "header.If-Match": "$response.body#/version"},
        ),
    },
    ("/firmware", "post", "201"): {
        "GetFirmware": ("get_firmware", _FIRMWARE),
        "UploadImage": ("upload_image", _FIRMWARE),
    },
    ("/rollouts", "post", "201"): {
        "GetRollout": ("get_rollout", _ROLLOUT),
        "Progress": ("progress", _ROLLOUT),
        "Pause": ("pause", _ROLLOUT),
        "Resume": ("resume", _ROLLOUT),
        "Cancel": ("cancel", _ROLLOUT),
    },
    ("/tokens", "post", "201"): {
        "RevokeToken": ("revoke_token", {"token_id": "$response.body#/token_id"}),
    },
}


def add_links(schema: dict[str, Any]) -> None:
    """Write :data:`LINKS` into ``schema`` (an OpenAPI document)."""
    paths = schema.get("paths", {})
    for (path, method, status), links in LINKS.items():
        response = paths[path][method]["responses"][status]
        response["links"] = {
            name: {"operationId": operation, "parameters": params}
            for name, (operation, params) in links.items()
        }
