"""The local development stack: ``outpost dev up | down | status``.

Everything lives under one git-ignored folder (``.outpost/`` by default): one
sub-folder per server with its data, configuration, log and PID file, the generated
secrets, and ``dev.env`` with the ``OUTPOST_*`` settings every other command reads.
Ports are fixed but not the servers' defaults, so a system Mosquitto or MongoDB on
1883/27017 does not collide with ours.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from deploy.local.prometheus import Prometheus
from deploy.local.servers import Mosquitto, PythonService, S3Server, Server, database_server
from outpost import signing
from outpost.settings import OutpostSettings
from outpost.signing import SigningKey

__all__ = ["DevSettings", "Stack", "Status"]


class DevSettings(OutpostSettings):
    """``OUTPOST_DEV_*``: where the local stack lives and which ports it uses.

    Read from the environment and ``./.env`` only, not from the ``dev.env`` the stack
    writes for the services: that file names the stack's own FerretDB in
    ``OUTPOST_MONGO_URL``, which read back here meant "bring your own MongoDB", so
    ``outpost dev status`` showed the database stopped and ``outpost dev down`` left
    FerretDB and PostgreSQL running.
    """

    model_config = SettingsConfigDict(env_prefix="OUTPOST_DEV_", env_file=".env")
    root: Path = Field(default=Path(".outpost"), description="Where the stack keeps its data")
    mqtt_port: int = Field(default=11883, ge=1024, le=65535, description="Mosquitto")
    mqtt_tls_port: int = Field(
        default=18883, ge=1024, le=65535, description="Mosquitto's TLS listener (devices)"
    )
    mongo_port: int = Field(default=27117, ge=1024, le=65535, description="FerretDB")
    s3_port: int = Field(default=17070, ge=1024, le=65535, description="versitygw (S3)")
    api_port: int = Field(default=18080, ge=1024, le=65535, description="outpost api")
    bridge_port: int = Field(default=18081, ge=1024, le=65535, description="outpost bridge")
    scheduler_port: int = Field(default=18082, ge=1024, le=65535, description="outpost scheduler")
    prometheus_port: int = Field(
        default=19090, ge=1024, le=65535, description="Prometheus (scrapes the services)"
    )
    demo_devices: int = Field(
        default=20, ge=0, le=5000, description="Simulated devices `outpost dev up` starts"
    )
    external_mongo_url: str | None = Field(
        default=None,
        validation_alias="OUTPOST_MONGO_URL",
        description="Bring your own MongoDB: use it and start no FerretDB/PostgreSQL",
    )


@dataclass(frozen=True)
class Status:
    name: str
    pid: int | None
    port: int
    healthy: bool
    detail: str
    required: bool  # infrastructure must run; our services and the simulator may be off

    @property
    def ok(self) -> bool:
        return self.healthy or (not self.required and self.pid is None)


class Stack:
    def __init__(self, settings: DevSettings) -> None:
        self.root = settings.root.resolve()
        creds = self._secrets()
        self.broker = Mosquitto(
            self.root / "mosquitto",
            settings.mqtt_port,
            backend_password=creds["mqtt_backend_password"],
            tls_port=settings.mqtt_tls_port,
        )
        self.mongo = database_server(
            self.root / "mongodb", settings.mongo_port, external_url=settings.external_mongo_url
        )
        self.s3 = S3Server(self.root / "s3", settings.s3_port, secret_key=creds["s3_secret_key"])
        self._signing_key = creds["firmware_signing_key"]
        env = self.env_file
        self.bridge = PythonService(
            self.root / "bridge",
            settings.bridge_port,
            service="bridge",
            env_file=env,
            env=self._account("bridge"),
        )
        self.api = PythonService(
            self.root / "api",
            settings.api_port,
            service="api",
            env_file=env,
            env=self._account("api"),
        )
        self.scheduler = PythonService(
            self.root / "scheduler",
            settings.scheduler_port,
            service="scheduler",
            env_file=env,
            env=self._account("scheduler"),
        )
        self.sim = PythonService(
            self.root / "sim",
            0,
            service="sim",
            env_file=env,
            args=(
                "--devices",
                str(settings.demo_devices),
                "--prefix",
                "demo",
                "--state-interval",
                "30",
            ),
        )
        self.demo_devices = settings.demo_devices
        self.prometheus = Prometheus(
            self.root / "prometheus",
            settings.prometheus_port,
            targets={
                "outpost-bridge": [f"127.0.0.1:{settings.bridge_port}"],
                "outpost-api": [f"127.0.0.1:{settings.api_port}"],
                "outpost-scheduler": [f"127.0.0.1:{settings.scheduler_port}"],
            },
        )

    @property
    def env_file(self) -> Path:
        return self.root / "dev.env"

    def _account(self, role: str) -> dict[str, str]:
        """Each service connects to the broker with its own role's account."""
        username, password = self.broker.account(role)
        return {"OUTPOST_MQTT_USERNAME": username, "OUTPOST_MQTT_PASSWORD": password}

    @property
    def sim_accounts(self) -> Path:
        """Device id -> password of every demo device, written when they are registered."""
        return self.root / "sim" / "accounts.json"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    def servers(self) -> Iterator[Server]:
        """The infrastructure servers, in start order."""
        yield self.broker
        yield self.mongo
        yield self.s3
        yield self.prometheus  # scrapes the services, whether they run yet or not

    def services(self) -> Iterator[PythonService]:
        """Our own services, in start order (the simulator is started separately)."""
        yield self.bridge
        yield self.api
        yield self.scheduler

    def everything(self) -> Iterator[Server]:
        yield from self.servers()
        yield from self.services()
        yield self.sim

    def _secrets(self) -> dict[str, str]:
        """Random credentials made on the first ``up`` and kept for the next ones (0600);
        a secret added by a newer version is made once and kept the same way."""
        path = self.root / "secrets.json"
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        wanted = {
            "mqtt_backend_password": lambda: secrets.token_urlsafe(18),
            "s3_secret_key": lambda: secrets.token_urlsafe(24),
            "firmware_signing_key": signing.new_private_key,
        }
        missing = {name: make() for name, make in wanted.items() if name not in stored}
        if missing:
            stored |= missing
            self.root.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(json.dumps(stored))
        return stored

    def env(self) -> dict[str, str]:
        """The ``OUTPOST_*`` settings that point every command at this stack."""
        return {
            "OUTPOST_MQTT_URL": self.broker.url,
            # commands run by hand (e.g. `outpost bridge resync`) read; services get their own
            **self._account("observer"),
            "OUTPOST_SIM_BROKER_URL": self.broker.tls_url,
            "OUTPOST_SIM_CA_FILE": str(self.broker.ca_file),
            "OUTPOST_SIM_ACCOUNTS_FILE": str(self.sim_accounts),
            "OUTPOST_SIM_FIRMWARE_KEY": SigningKey(self._signing_key).public_text,
            "OUTPOST_API_FIRMWARE_SIGNING_KEY": self._signing_key,
            "OUTPOST_MONGO_URL": self.mongo.url,
            "OUTPOST_MONGO_DATABASE": "outpost",
            "OUTPOST_S3_ENDPOINT_URL": self.s3.url,
            "OUTPOST_S3_REGION": self.s3.region,
            "OUTPOST_S3_BUCKET": self.s3.bucket,
            "OUTPOST_S3_ACCESS_KEY_ID": self.s3.access_key,
            "OUTPOST_S3_SECRET_ACCESS_KEY": self.s3.secret_key,
            "OUTPOST_STATUS_PROMETHEUS_URL": self.prometheus.url,
            "OUTPOST_STATUS_API_URL": self.api_url,
            "OUTPOST_STATUS_TOKEN_FILE": str(self.root / "demo-token"),
        }

    def write_env(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text("".join(f"{key}={value}\n" for key, value in self.env().items()))

    def status(self) -> list[Status]:
        result = []
        infrastructure = {server.name for server in self.servers()}
        for server in self.everything():
            pid = server.running_pid()
            healthy = pid is not None and server.healthy()
            detail = "healthy" if healthy else ("not answering" if pid else "stopped")
            result.append(
                Status(
                    server.name,
                    pid,
                    server.port,
                    healthy,
                    detail,
                    required=server.name in infrastructure,
                )
            )
        return result
