"""What the lifespan owns and hands to routes (``request.state``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from api.broker_admin import DeviceAccounts
from api.broker_link import BrokerLink
from api.firmware_store import FirmwareStore
from api.metrics import ApiMetrics
from api.settings import ApiSettings
from api.store.base import Db


@dataclass(frozen=True)
class AppState:
    db: Db
    link: BrokerLink
    broker_admin: DeviceAccounts
    firmware: FirmwareStore
    metrics: ApiMetrics
    settings: ApiSettings
    logger: logging.Logger
    token_seen: dict[str, datetime] = field(default_factory=dict)  # last_used_at writes
