"""The api's MQTT connection: publishes and dynamic-security commands (aiomqtt, MQTT v5).

One supervised connection per api process. :meth:`BrokerLink.run` keeps it up
(reconnecting with :func:`outpost.mqtt.reconnect_delay`) and routes
``$CONTROL/dynamic-security/v1/response`` messages to the waiting
:meth:`BrokerLink.control` call by ``correlationData``.
aiomqtt/paho errors become :class:`api.errors.BrokerError` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import aiomqtt
from paho.mqtt.properties import Properties

from api.errors import BrokerError
from outpost.mqtt import aiomqtt_client, reconnect_delay
from outpost.settings import MqttSettings

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
Handler = Callable[[aiomqtt.Message], None]


class BrokerLink:
    def __init__(
        self, settings: MqttSettings, logger: logging.Logger, *, timeout: float = 5.0
    ) -> None:
        self._settings = settings
        self._logger = logger
        self._timeout = timeout
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: list[tuple[str, Handler]] = []

    def listen(self, subscription: str, handler: Handler) -> None:
        """Also subscribe to ``subscription`` (at every connect) and hand each message that
        is not a dynamic-security response to ``handler``, which must not block."""
        self._listeners.append((subscription, handler))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _new_client(self) -> aiomqtt.Client:
        s = self._settings
        return aiomqtt_client(
            s.endpoint(),
            f"{s.client_id_prefix}-api-{uuid.uuid4().hex[:8]}",
            keepalive=s.keepalive,
            timeout=self._timeout,
            logger=self._logger,
        )

    async def run(self) -> None:
        """Keep the connection up until cancelled."""
        failures = 0
        while True:
            try:
                async with self._new_client() as client:
                    await client.subscribe(RESPONSE_TOPIC, qos=1)
                    for subscription, _ in self._listeners:
                        await client.subscribe(subscription, qos=1)
                    self._client = client
                    self._connected.set()
                    failures = 0
                    self._logger.info("broker connected", extra={"host": self._settings.host})
                    async for message in client.messages:
                        self._route(message)
            except aiomqtt.MqttError as exc:
                delay = reconnect_delay(failures, base=0.2, cap=10.0)
                failures += 1
                self._logger.warning(
                    "broker connection lost", extra={"error": str(exc), "retry_s": round(delay, 2)}
                )
            else:
                delay = 0.0
            finally:
                self._connected.clear()
                self._client = None
            await asyncio.sleep(delay)

    def _route(self, message: aiomqtt.Message) -> None:
        if message.topic.value == RESPONSE_TOPIC:
            self._on_response(message.payload)
            return
        for _, handler in self._listeners:
            handler(message)

    async def _ready_client(self) -> aiomqtt.Client:
        try:
            async with asyncio.timeout(self._timeout):
                await self._connected.wait()
        except TimeoutError:
            raise BrokerError("broker unreachable") from None
        assert self._client is not None
        return self._client

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        client = await self._ready_client()
        try:
            await client.publish(
                topic,
                payload,
                qos=qos,
                retain=retain,
                properties=properties,
                timeout=self._timeout,
            )
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"publish to {topic} failed: {exc}") from None

    async def control(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send dynamic-security commands; return one response per command, in order."""
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[dict[str, Any]]] = []
        tagged = []
        for command in commands:
            tag = uuid.uuid4().hex
            waits.append(self._pending.setdefault(tag, loop.create_future()))
            tagged.append({**command, "correlationData": tag})
        try:
            await self.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}).encode())
            async with asyncio.timeout(self._timeout):
                return list(await asyncio.gather(*waits))
        except TimeoutError:
            raise BrokerError("broker did not answer the dynamic-security command") from None
        finally:
            for command in tagged:
                self._pending.pop(command["correlationData"], None)

    def _on_response(self, payload: Any) -> None:
        try:
            responses = json.loads(payload)["responses"]
        except (TypeError, ValueError, KeyError):
            self._logger.warning("unreadable dynamic-security response")
            return
        for response in responses if isinstance(responses, list) else []:
            future = self._pending.get(str(response.get("correlationData")))
            if future is not None and not future.done():
                future.set_result(response)
