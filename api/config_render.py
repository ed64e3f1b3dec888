"""Effective device config = group template merge-patched with device overrides. Pure.

The merge (RFC 7396), validation, canonical JSON and hash are those of
:mod:`schemas.wifi`; this module is the api's one place that touches it. Templates and
overrides are partial (a template may leave ``country`` to each device); only the
effective config must be a valid :class:`~schemas.wifi.WifiConfig`. An effective config
that is empty (no template, no overrides) means "nothing desired yet".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from api.errors import InvalidInput
from schemas.wifi import InvalidConfig, config_hash, merge_patch, validate_config

MAX_PATCH_BYTES = 64 * 1024
JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rendered:
    config: JsonObject  # canonical form: every default included
    hash: str


Loc = tuple[str | int, ...]


def check_patch(patch: JsonObject, what: str) -> None:
    """A template or override: a JSON object of bounded size (validated once merged)."""
    size = len(json.dumps(patch, separators=(",", ":")))
    if size > MAX_PATCH_BYTES:
        raise InvalidInput(f"{what}: {size} bytes > {MAX_PATCH_BYTES}", loc=("body", what))


def validated(config: JsonObject, what: str = "config", loc: Loc = ("body",)) -> Rendered:
    """The config validated; a 422 names each field, under ``loc`` (where the request
    wrote it: ``("body", "overrides")``), by its path in the effective config."""
    try:
        model = validate_config(config)
    except InvalidConfig as exc:
        errors = [
            {"loc": [*loc, *issue.loc], "msg": f"{what}: {issue.message}", "type": "wifi_config"}
            for issue in exc.issues
        ]
        raise InvalidInput(f"{what}: {exc}", errors=errors) from None
    return Rendered(model.model_dump(mode="json"), config_hash(model))


def render(
    template: JsonObject, overrides: JsonObject, what: str = "config", loc: Loc = ("body",)
) -> Rendered | None:
    """The effective config, or None when there is nothing to configure."""
    merged = merge_patch(template, overrides)
    if not merged:
        return None
    return validated(merged, what, loc)
