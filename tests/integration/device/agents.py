"""Run reference agents for tests: in a thread (in-process) or as a killable subprocess."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.local import Mosquitto
from device.agent import Agent, AgentConfig
from outpost.signing import SigningKey, new_private_key

REPO = Path(__file__).resolve().parents[3]
# stands in for the api's key: test agents trust it, test job commands are signed with it
FIRMWARE_SIGNER = SigningKey(new_private_key())


def agent_config(
    broker: Mosquitto, device_id: str, password: str, state_file: Path, **overrides: Any
) -> AgentConfig:
    """The agent logs in with the account its registration returned (``password``), over
    TLS verified with the local CA, and trusts the test's firmware signing key."""
    base: dict[str, Any] = {
        "state_interval": 60.0,
        "backoff_base": 0.2,
        "backoff_cap": 1.0,
        "firmware_key": FIRMWARE_SIGNER.public_text,
    }
    return AgentConfig(
        device_id=device_id,
        host="127.0.0.1",
        port=broker.tls_port,
        tls=True,
        ca_file=str(broker.ca_file),
        username=device_id,
        password=password,
        state_file=state_file,
        **(base | overrides),
    )


@dataclass
class ThreadAgent:
    agent: Agent
    stop: threading.Event
    thread: threading.Thread

    def close(self, timeout: float = 15.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "agent did not stop"


def start_thread_agent(config: AgentConfig, **kwargs: Any) -> ThreadAgent:
    agent = Agent(config, logging.getLogger(f"test.agent.{config.device_id}"), **kwargs)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), name=config.device_id, daemon=True)
    thread.start()
    return ThreadAgent(agent, stop, thread)


def start_process_agent(
    broker: Mosquitto, device_id: str, password: str, state_file: Path, *extra: str
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "device.agent",
        "--device-id",
        device_id,
        "--url",
        broker.tls_url,
        "--ca-file",
        str(broker.ca_file),
        "--username",
        device_id,
        "--state-file",
        str(state_file),
        "--backoff-cap",
        "1",
        "--firmware-key",
        FIRMWARE_SIGNER.public_text,
        *extra,
    ]
    env = {
        **os.environ,
        "OUTPOST_DEVICE_PASSWORD": password,
        "PYTHONPATH": str(REPO),
    }
    log = (state_file.parent / f"{device_id}.log").open("ab")
    return subprocess.Popen(argv, cwd=state_file.parent, env=env, stdout=log, stderr=log)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
