"""The scheduler's exceptions, one tree under :class:`SchedulerError`.

SchedulerError
├── StoreError          MongoDB failed (pymongo errors are mapped here, at the edge)
├── PublishError        the broker did not take a command (paho/aiomqtt mapped here)
├── PresignError        S3 could not sign a URL (botocore mapped here)
├── LeaseLost           our lease expired or was taken over: stop the work at once
└── RolloutDataError    a rollout or firmware document that cannot be run
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Base of every error the scheduler raises."""


class StoreError(SchedulerError):
    pass


class PublishError(SchedulerError):
    pass


class PresignError(SchedulerError):
    pass


class LeaseLost(SchedulerError):
    pass


class RolloutDataError(SchedulerError):
    pass
