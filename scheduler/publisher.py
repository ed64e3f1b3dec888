"""Transport edges of the rollout executor: presigned S3 URLs and MQTT publishes.

- :class:`Presigner` signs a GET URL for a firmware object at send time (boto3's
  ``generate_presigned_url``: local HMAC work, no request to S3). URLs are never stored;
  a retry or resume signs a new one.
- :class:`CommandSink` is the one abstract boundary to the broker; :class:`MqttSink`
  publishes with QoS 1 and an MQTT v5 Message Expiry Interval and returns once the
  broker's PUBACK arrived. paho/aiomqtt errors become :class:`PublishError`, botocore
  errors :class:`PresignError`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiomqtt
from botocore.exceptions import BotoCoreError, ClientError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from outpost import s3 as outpost_s3
from outpost.settings import S3Settings
from scheduler.errors import PresignError, PublishError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["CommandSink", "MqttSink", "Outgoing", "Presigner", "s3_client"]


def s3_client(settings: S3Settings) -> S3Client:
    """Presigning is local; the client only needs short timeouts."""
    return outpost_s3.client(settings, connect_timeout=2, read_timeout=10)


class Presigner:
    def __init__(self, client: S3Client, bucket: str) -> None:
        self._client = client
        self._bucket = bucket

    def get_url(self, key: str, seconds: int, method: str = "get_object") -> str:
        """A GET (or ``put_object``: PUT) URL for ``key`` valid for ``seconds`` from now."""
        try:
            return self._client.generate_presigned_url(
                method, Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=seconds
            )
        except (BotoCoreError, ClientError) as exc:
            raise PresignError(f"presign {key}: {exc}") from exc


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    expiry_s: int | None = None  # MQTT v5 message expiry; None: never expires
    retain: bool = False
    response_topic: str | None = None  # MQTT v5 request/response (device commands)
    correlation: bytes | None = None


class CommandSink(abc.ABC):
    """Where job commands go. ``publish_all`` returns once the broker took every one."""

    @abc.abstractmethod
    async def publish_all(self, messages: Sequence[Outgoing]) -> None: ...


class MqttSink(CommandSink):
    """QoS 1 publishes on an open :class:`aiomqtt.Client` (which it does not close).

    The service re-attaches a new client after a reconnect (:meth:`attach`); while none
    is attached, publishing raises :class:`PublishError`.
    """

    def __init__(self, client: aiomqtt.Client | None = None, timeout: float = 10.0) -> None:
        self._client = client
        self._timeout = timeout

    def attach(self, client: aiomqtt.Client | None) -> None:
        self._client = client

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def publish_all(self, messages: Sequence[Outgoing]) -> None:
        if self._client is None:
            raise PublishError("not connected to the broker")
        try:
            async with asyncio.TaskGroup() as group:
                for message in messages:
                    group.create_task(self._one(message), name=f"publish {message.topic}")
        except* (aiomqtt.MqttError, TimeoutError) as errors:
            raise PublishError(
                f"{len(errors.exceptions)} publishes failed: {errors.exceptions[0]}"
            ) from None

    async def _one(self, message: Outgoing) -> None:
        props = None
        if message.expiry_s is not None or message.response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if props is not None and message.expiry_s is not None:
            props.MessageExpiryInterval = max(1, message.expiry_s)
        if props is not None and message.response_topic is not None:
            props.ResponseTopic = message.response_topic
            if message.correlation is not None:
                props.CorrelationData = message.correlation
        assert self._client is not None
        await self._client.publish(
            message.topic,
            message.payload,
            qos=1,
            retain=message.retain,
            properties=props,
            timeout=self._timeout,
        )
