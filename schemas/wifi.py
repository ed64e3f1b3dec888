"""The WiFi configuration of one access point: typed, validated, canonical, hashed.

What an admin writes (a group template plus per-device overrides, merged with
:func:`merge_patch`) becomes a :class:`WifiConfig`. Validation follows what access points
accept, so a config the backend accepts is one a device can apply:

- SSID names are 1-32 *bytes* of UTF-8 (not characters) without control characters;
- WPA2-PSK passphrases are 8-63 printable ASCII characters or exactly 64 hex digits (a raw
  PSK); WPA3-SAE takes only the 8-63 character form (SAE has no raw-PSK form);
- WPA2-Enterprise needs 1-4 RADIUS servers;
- the country is an ISO 3166-1 alpha-2 code (``pycountry``'s list), and a radio's channel
  and width must be open to an access point there according to Linux's wireless-regdb
  (:mod:`schemas.regulatory`: e.g. 5 GHz channel 165 is 20 MHz only; 80 MHz on 132-144
  needs channel 144, which ETSI countries do not allow);
- an SSID offered on a band needs a radio on that band; on 6 GHz it must use WPA3-SAE;
- one SSID name at most once per band. The same name on disjoint bands is allowed: that is
  how a network is split into WPA2 on 2.4/5 GHz and WPA3-only on 6 GHz.

Unknown fields are rejected (``extra="forbid"``) at every level: a typo in an admin's
template must not be silently dropped, and a device must not apply a config it only
half understands.

Channels follow the wireless-regdb file shipped in ``schemas/data`` (see
:mod:`schemas.regulatory` for its version and how it is read; transmit power is not
checked against its limits). A device's own regulatory database stays the final
authority: if it refuses a channel, it reports the config as rejected with its reason.

What admins write, what the api shows
-------------------------------------
- :class:`WifiConfigPatch` is a typed partial of :class:`WifiConfig`: a group template or a
  device's overrides, merged with :func:`merge_patch` (``null`` removes a key; lists are
  replaced whole). Its types are the config's, so a wrong type is refused where it is
  written; only the merged result must be a whole, consistent :class:`WifiConfig`.
- Passphrases and RADIUS secrets are write-only: the api shows :class:`WifiConfigPublic`
  (a config) and :class:`WifiConfigPatchPublic` (a template), where each secret is
  replaced by ``passphrase_set`` / ``secret_set`` (:func:`redact`). The device receives
  its config in full on its own ``devices/{id}/config`` topic.

Canonical form and hash
-----------------------
:func:`canonical_json` is the model dumped with every default included, keys sorted, no
whitespace, UTF-8 (not ASCII-escaped). Lists whose order carries no meaning (an SSID's
bands) are sorted during validation, so equal meaning gives equal bytes.
:func:`config_hash` is the SHA-256 of those bytes: "changed or not" is one comparison.
Adding a field with a default to this model changes every hash once (the default is part
of the canonical form); that is intended, since devices then receive the new field.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pycountry
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from schemas.errors import SchemaError
from schemas.regulatory import WIDTHS, Band, channel_plan

__all__ = [
    "ISO_COUNTRIES",
    "WIDTHS",
    "Band",
    "ConfigIssue",
    "Enterprise",
    "EnterprisePublic",
    "InvalidConfig",
    "Open",
    "Radio",
    "RadioPatch",
    "RadiusServer",
    "RadiusServerPublic",
    "Security",
    "SecurityPublic",
    "Ssid",
    "SsidPatchPublic",
    "SsidPublic",
    "Syslog",
    "SyslogPatch",
    "WifiConfig",
    "WifiConfigPatch",
    "WifiConfigPatchPublic",
    "WifiConfigPublic",
    "Wpa2Psk",
    "Wpa2PskPublic",
    "Wpa3Sae",
    "Wpa3SaePublic",
    "allowed_channels",
    "canonical_json",
    "config_hash",
    "effective_config",
    "merge_patch",
    "redact",
    "validate_config",
]


_BAND_ORDER = {band: i for i, band in enumerate(Band)}
ISO_COUNTRIES: tuple[str, ...] = tuple(sorted(c.alpha_2 for c in pycountry.countries))
_ISO = frozenset(ISO_COUNTRIES)

# ----------------------------------------------------------------------- regulatory rules


def allowed_channels(band: Band, width: int, country: str) -> frozenset[int]:
    """Primary channels usable on ``band`` at ``width`` MHz in ``country`` (wireless-regdb,
    :mod:`schemas.regulatory`)."""
    return channel_plan(country).channels(band, width)


def _spans(channels: Iterable[int]) -> str:
    """``1-11`` / ``36-64, 100-144``: compact list of channels for error messages."""
    ordered = sorted(channels)
    if not ordered:
        return "none"
    step = 1 if ordered[-1] <= 14 else 4
    runs: list[list[int]] = [[ordered[0], ordered[0]]]
    for c in ordered[1:]:
        if c - runs[-1][1] == step:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# ------------------------------------------------------------------------- field types


def _ssid_name(value: str) -> str:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("SSID is not valid Unicode text") from None
    if not 1 <= size <= 32:
        raise ValueError(f"SSID must be 1-32 bytes in UTF-8, got {size} bytes")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("SSID must not contain control characters")
    return value


_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def _wpa_passphrase(value: str) -> str:
    if len(value) == 64:
        if not _HEX64.fullmatch(value):
            raise ValueError("a 64-character passphrase must be a raw PSK of 64 hex digits")
        return value
    if not 8 <= len(value) <= 63:
        raise ValueError(
            f"passphrase must be 8-63 characters or 64 hex digits, got {len(value)} characters"
        )
    if not _PRINTABLE.fullmatch(value):
        raise ValueError("passphrase must be printable ASCII (space to ~)")
    return value


def _sae_password(value: str) -> str:
    if _HEX64.fullmatch(value):
        raise ValueError("WPA3-SAE has no raw-PSK form: use an 8-63 character passphrase")
    if len(value) == 64:
        raise ValueError("passphrase must be 8-63 characters, got 64")
    return _wpa_passphrase(value)


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _host(value: str) -> str:
    """An IP address (normalised) or a DNS host name (lower case)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    valid = all(_HOST_LABEL.fullmatch(label) for label in labels)
    if len(value) > 253 or not valid or labels[-1].isdigit():  # 10.0.0.256 is no name
        raise ValueError(f"not an IP address or DNS host name: {value[:80]!r}")
    return value.lower()


def _sorted_bands(value: tuple[Band, ...]) -> tuple[Band, ...]:
    if len(set(value)) != len(value):
        raise ValueError("bands must not repeat")
    return tuple(sorted(value, key=_BAND_ORDER.__getitem__))


def _radius_count(value: tuple[RadiusServer, ...]) -> tuple[RadiusServer, ...]:
    if not 1 <= len(value) <= 4:
        raise ValueError(f"wpa2-enterprise needs 1-4 RADIUS servers, got {len(value)}")
    return value


SsidName = Annotated[str, AfterValidator(_ssid_name)]
Passphrase = Annotated[str, AfterValidator(_wpa_passphrase)]
SaePassword = Annotated[str, AfterValidator(_sae_password)]
Host = Annotated[str, StringConstraints(min_length=1, max_length=253), AfterValidator(_host)]
Port = Annotated[int, Field(ge=1, le=65535)]
VlanId = Annotated[int, Field(ge=1, le=4094)]


def _iso_country(value: str) -> str:
    if value not in _ISO:
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return value


Country = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{2}$"),
    AfterValidator(_iso_country),
    Field(description="ISO 3166-1 alpha-2 country code, upper case (pycountry's list)"),
]


# "auto" as a one-value enum, not a JSON Schema ``const``: client generators handle an
# enum in a union with an integer, while openapi-python-client 0.29 parses a ``const``
# branch as if it were the only one (a channel of 6 failed to parse).
Auto = Annotated[
    Literal["auto"], WithJsonSchema({"type": "string", "enum": ["auto"], "title": "Auto"})
]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------------------- models


class Open(_Strict):
    mode: Literal["open"] = "open"


class Wpa2Psk(_Strict):
    mode: Literal["wpa2-psk"] = "wpa2-psk"
    passphrase: Passphrase = Field(repr=False)


class Wpa3Sae(_Strict):
    mode: Literal["wpa3-sae"] = "wpa3-sae"
    passphrase: SaePassword = Field(repr=False)


class RadiusServer(_Strict):
    host: Host
    port: Port = 1812
    secret: Annotated[
        str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x20-\x7e]+$")
    ] = Field(repr=False)


class Enterprise(_Strict):
    """WPA2-Enterprise (802.1X): the RADIUS servers in order of preference."""

    mode: Literal["wpa2-enterprise"] = "wpa2-enterprise"
    radius: Annotated[
        tuple[RadiusServer, ...],
        AfterValidator(_radius_count),
        Field(json_schema_extra={"minItems": 1, "maxItems": 4}),
    ]


Security = Annotated[Open | Wpa2Psk | Wpa3Sae | Enterprise, Field(discriminator="mode")]


class Ssid(_Strict):
    name: SsidName
    security: Security
    bands: Annotated[tuple[Band, ...], Field(min_length=1), AfterValidator(_sorted_bands)] = Field(
        description="Bands the SSID is offered on; order carries no meaning"
    )
    hidden: bool = False
    vlan: VlanId | None = Field(default=None, description="Tagged VLAN; none: untagged LAN")


class Radio(_Strict):
    """One radio; its band is its key in :attr:`WifiConfig.radios`."""

    channel: Auto | Annotated[int, Field(ge=1, le=233)] = "auto"
    width: Literal[20, 40, 80, 160, 320] = Field(default=20, description="Channel width, MHz")
    tx_power_dbm: Auto | Annotated[int, Field(ge=1, le=30)] = "auto"


class Syslog(_Strict):
    host: Host
    port: Port = 514
    protocol: Literal["udp", "tcp", "tls"] = "udp"


class WifiConfig(_Strict):
    """The desired configuration of one access point."""

    country: Country
    radios: dict[Band, Radio] = Field(min_length=1)
    ssids: tuple[Ssid, ...] = Field(default=(), max_length=32)
    management_vlan: VlanId | None = None
    ntp_servers: tuple[Host, ...] = Field(default=(), max_length=4)
    syslog: Syslog | None = None

    @model_validator(mode="after")
    def _consistent(self) -> WifiConfig:
        issues = [*_radio_issues(self), *_ssid_issues(self), *_ntp_issues(self)]
        if issues:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("wifi_config", issue.message),
                        loc=issue.loc,
                        input=issue.value,
                    )
                    for issue in issues
                ],
            )
        return self


# ------------------------------------------------------------- what admins write: patches


class _Patch(BaseModel):
    """A typed partial: every field optional; ``null`` removes the key when merged."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RadioPatch(_Patch):
    """A partial :class:`Radio`."""

    channel: Auto | Annotated[int, Field(ge=1, le=233)] | None = None
    width: Literal[20, 40, 80, 160, 320] | None = Field(default=None, description="MHz")
    tx_power_dbm: Auto | Annotated[int, Field(ge=1, le=30)] | None = None


class SyslogPatch(_Patch):
    """A partial :class:`Syslog`."""

    host: Host | None = None
    port: Port | None = None
    protocol: Literal["udp", "tcp", "tls"] | None = None


class WifiConfigPatch(_Patch):
    """A group template or a device's overrides: a typed partial of :class:`WifiConfig`,
    merged with :func:`merge_patch` (RFC 7396).

    Objects (``radios``, each radio, ``syslog``) merge key by key; lists (``ssids``,
    ``ntp_servers``) are replaced whole, so an SSID is always written complete, secrets
    included. Only the merged result must be a whole, consistent :class:`WifiConfig`.
    """

    country: Country | None = None
    radios: dict[Band, RadioPatch | None] | None = None
    ssids: tuple[Ssid, ...] | None = Field(default=None, max_length=32)
    management_vlan: VlanId | None = None
    ntp_servers: tuple[Host, ...] | None = Field(default=None, max_length=4)
    syslog: SyslogPatch | None = None

    def to_json(self) -> dict[str, Any]:
        """The patch as written (keys given, ``null`` kept: it removes), JSON types."""
        return self.model_dump(mode="json", exclude_unset=True)


# ------------------------------------------------------- what the api shows: no secrets


class Wpa2PskPublic(_Strict):
    mode: Literal["wpa2-psk"] = "wpa2-psk"
    passphrase_set: bool = Field(description="The passphrase is write-only")


class Wpa3SaePublic(_Strict):
    mode: Literal["wpa3-sae"] = "wpa3-sae"
    passphrase_set: bool = Field(description="The passphrase is write-only")


class RadiusServerPublic(_Strict):
    host: str
    port: int = 1812
    secret_set: bool = Field(description="The shared secret is write-only")


class EnterprisePublic(_Strict):
    mode: Literal["wpa2-enterprise"] = "wpa2-enterprise"
    radius: tuple[RadiusServerPublic, ...]


SecurityPublic = Annotated[
    Open | Wpa2PskPublic | Wpa3SaePublic | EnterprisePublic, Field(discriminator="mode")
]


class SsidPublic(_Strict):
    name: str
    security: SecurityPublic
    bands: tuple[Band, ...]
    hidden: bool
    vlan: int | None


class WifiConfigPublic(_Strict):
    """A :class:`WifiConfig` as the api shows it: secrets replaced by ``*_set``."""

    country: str
    radios: dict[Band, Radio]
    ssids: tuple[SsidPublic, ...]
    management_vlan: int | None
    ntp_servers: tuple[str, ...]
    syslog: Syslog | None


class SsidPatchPublic(_Strict):
    name: str
    security: SecurityPublic
    bands: tuple[Band, ...]
    hidden: bool = False
    vlan: int | None = None


class WifiConfigPatchPublic(_Patch):
    """A :class:`WifiConfigPatch` as the api shows it: secrets replaced by ``*_set``."""

    country: str | None = None
    radios: dict[Band, RadioPatch | None] | None = None
    ssids: tuple[SsidPatchPublic, ...] | None = None
    management_vlan: int | None = None
    ntp_servers: tuple[str, ...] | None = None
    syslog: SyslogPatch | None = None


_SECRETS = {"passphrase": "passphrase_set", "secret": "secret_set"}


def _redact_security(security: Any) -> Any:
    if not isinstance(security, Mapping):
        return security
    out = {_SECRETS.get(k, k): (v is not None if k in _SECRETS else v) for k, v in security.items()}
    radius = security.get("radius")
    if isinstance(radius, list | tuple):
        out["radius"] = [
            {_SECRETS.get(k, k): (v is not None if k in _SECRETS else v) for k, v in server.items()}
            if isinstance(server, Mapping)
            else server
            for server in radius
        ]
    return out


def redact(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A config or patch (JSON form) with every passphrase and RADIUS secret replaced by
    ``passphrase_set`` / ``secret_set``: what the api shows and what audit keeps."""
    if config is None:
        return None
    out = copy.deepcopy(dict(config))
    ssids = out.get("ssids")
    if isinstance(ssids, list | tuple):
        out["ssids"] = [
            {**s, "security": _redact_security(s.get("security"))} if isinstance(s, Mapping) else s
            for s in ssids
        ]
    return out


# ------------------------------------------------------------------ cross-field rules


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One reason a config is invalid: where (``ssids.1.name``) and why."""

    loc: tuple[str | int, ...]
    message: str
    value: Any = None

    @property
    def path(self) -> str:
        return ".".join(str(p) for p in self.loc) or "config"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _radio_issues(config: WifiConfig) -> Iterable[ConfigIssue]:
    for band, radio in config.radios.items():
        yield from _one_radio_issues(band, radio, config.country)


def _one_radio_issues(band: Band, radio: Radio, country: str) -> Iterable[ConfigIssue]:
    loc: tuple[str | int, ...] = ("radios", band.value)
    if radio.width not in WIDTHS[band]:
        widths = "/".join(map(str, WIDTHS[band]))
        yield ConfigIssue(
            (*loc, "width"),
            f"{radio.width} MHz is not available on {band} (allowed: {widths} MHz)",
            radio.width,
        )
        return
    if not allowed_channels(band, 20, country):
        yield ConfigIssue(loc, f"{band} is not permitted in {country}")
        return
    usable = allowed_channels(band, radio.width, country)
    if radio.channel == "auto":
        if not usable:
            yield ConfigIssue(
                (*loc, "width"),
                f"no {band} channel allows {radio.width} MHz in {country}",
                radio.width,
            )
        return
    yield from _channel_issues(loc, band, radio, country, usable)


def _channel_issues(
    loc: tuple[str | int, ...], band: Band, radio: Radio, country: str, usable: frozenset[int]
) -> Iterable[ConfigIssue]:
    allowed = allowed_channels(band, 20, country)
    if radio.channel not in allowed:
        yield ConfigIssue(
            (*loc, "channel"),
            f"channel {radio.channel} is not allowed on "
            f"{band} in {country} (allowed: {_spans(allowed)})",
            radio.channel,
        )
    elif radio.channel not in usable:
        yield ConfigIssue(
            (*loc, "width"),
            f"channel {radio.channel} cannot use {radio.width} "
            f"MHz in {country} ({radio.width} MHz channels: {_spans(usable)})",
            radio.width,
        )


def _ssid_issues(config: WifiConfig) -> Iterable[ConfigIssue]:
    seen: dict[tuple[str, Band], int] = {}
    for i, ssid in enumerate(config.ssids):
        for band in ssid.bands:
            first = seen.setdefault((ssid.name, band), i)
            if first != i:
                yield ConfigIssue(
                    ("ssids", i, "name"),
                    f"SSID {ssid.name!r} is already offered on {band} by ssids.{first}",
                    ssid.name,
                )
        yield from _ssid_band_issues(i, ssid, config)


def _ssid_band_issues(i: int, ssid: Ssid, config: WifiConfig) -> Iterable[ConfigIssue]:
    for band in ssid.bands:
        if band not in config.radios:
            yield ConfigIssue(
                ("ssids", i, "bands"),
                f"SSID {ssid.name!r} is offered on {band} but no {band} radio is configured",
                band.value,
            )
    if Band.GHZ_6 in ssid.bands and ssid.security.mode != "wpa3-sae":
        yield ConfigIssue(
            ("ssids", i, "security", "mode"),
            f"SSID {ssid.name!r} is offered "
            f"on 6GHz, which requires wpa3-sae, not {ssid.security.mode}",
            ssid.security.mode,
        )


def _ntp_issues(config: WifiConfig) -> Iterable[ConfigIssue]:
    if len(set(config.ntp_servers)) != len(config.ntp_servers):
        yield ConfigIssue(("ntp_servers",), "NTP servers must not repeat")


# ------------------------------------------------------- validation, merge, canonical form


class InvalidConfig(SchemaError):
    """A WiFi config that cannot be accepted; :attr:`issues` say where and why."""

    def __init__(self, issues: tuple[ConfigIssue, ...]) -> None:
        super().__init__("; ".join(map(str, issues)))
        self.issues = issues


def validate_config(data: Mapping[str, Any]) -> WifiConfig:
    """Validate admin input (a JSON object); :class:`InvalidConfig` lists every problem."""
    try:
        return WifiConfig.model_validate(data)
    except ValidationError as exc:
        issues = tuple(
            ConfigIssue(tuple(e["loc"]), e["msg"].removeprefix("Value error, "), e.get("input"))
            for e in exc.errors()
        )
        raise InvalidConfig(issues) from None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch: ``patch`` applied to ``target``; inputs are not modified.

    - an object in the patch merges into the object in the target, key by key, recursively;
    - ``null`` in the patch removes the key (the field then takes its default);
    - anything else (string, number, list, or an object over a non-object) replaces the
      target's value. Lists are never merged: an override of ``ssids`` restates the list.
    """
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def effective_config(
    template: Mapping[str, Any], override: Mapping[str, Any] | None = None
) -> WifiConfig:
    """A device's config: its group ``template`` merge-patched with its ``override``."""
    return validate_config(merge_patch(template, override or {}))


def canonical_json(config: WifiConfig) -> bytes:
    """Sorted keys, no whitespace, defaults included, UTF-8: equal meaning, equal bytes."""
    return json.dumps(
        config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def config_hash(config: WifiConfig) -> str:
    """SHA-256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(config)).hexdigest()
