"""Small MQTT v5 clients for tests: a device (paho, to read reason codes) and a watcher."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class DeviceClient:
    """A paho MQTT v5 client in its own thread; every call waits with a timeout."""

    def __init__(
        self, host: str, port: int, device_id: str, password: str, client_id: str | None = None
    ) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or device_id, protocol=paho.MQTTv5
        )
        self.client.username_pw_set(device_id, password)
        self.host, self.port = host, port
        self.connack: Any = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.acks: dict[int, Any] = {}
        self.subacks: dict[int, Any] = {}
        self._acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connack = rc
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnected.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._acked:
            self.acks[mid] = rc
            self._acked.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._acked:
            self.subacks[mid] = rcs
            self._acked.notify_all()

    def connect(self, timeout: float = 5.0) -> Any:
        """The CONNACK reason code (``.is_failure`` when refused)."""
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError("no CONNACK")
        return self.connack

    def _wait(self, table: dict[int, Any], mid: int, timeout: float) -> Any:
        with self._acked:
            if not self._acked.wait_for(lambda: mid in table, timeout):
                raise TimeoutError(f"no ack for mid {mid}")
            return table[mid]

    def publish(
        self, topic: str, payload: bytes, retain: bool = False, timeout: float = 5.0
    ) -> Any:
        """QoS 1 publish; the PUBACK reason code (a denied publish shows only at QoS 1)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return self._wait(self.acks, info.mid, timeout)

    def subscribe(self, topic: str, timeout: float = 5.0) -> Any:
        _, mid = self.client.subscribe(topic, qos=1)
        return self._wait(self.subacks, mid, timeout)[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)
