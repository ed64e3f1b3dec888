"""Structured logging: one JSON object per line on stderr.

Services take a ``logging.Logger`` and add context with ``extra=``; every key passed
that way becomes a field of the line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from outpost.settings import LogSettings, load

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str | None = None) -> None:
    """Route the root logger to stderr as JSON lines (idempotent). ``level`` defaults to
    ``OUTPOST_LOG_LEVEL`` (:class:`outpost.settings.LogSettings`)."""
    if level is None:
        level = load(LogSettings).level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
