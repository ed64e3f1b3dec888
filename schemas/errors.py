"""The base of every exception ``schemas`` raises.

SchemaError (ValueError)
├── topics.TopicError      a topic outside the tree, or an invalid device/job id
├── wifi.InvalidConfig     a WiFi config that fails validation; .issues say where and why
└── protocol.Rejected      a message refused; .reason (closed set, a metric label), .detail
"""

from __future__ import annotations

__all__ = ["SchemaError"]


class SchemaError(ValueError):
    """Input that does not follow the protocol or the config schema."""
