"""The three servers of the local stack, each started from a directory it owns.

The same classes serve ``outpost dev up`` (fixed ports, data under ``.outpost/``) and the
test harness (free ports, temporary directories). A server object is cheap: it only
knows its directory and port; ``start`` spawns the process (unless ours already runs
there) and waits until it answers the way a client would use it:

- Mosquitto: an MQTT v5 CONNECT with the backend account gets a successful CONNACK;
- MongoDB/FerretDB: ``ping``;
- S3: the firmware bucket exists (created on first start) and answers HEAD.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import secrets
import shutil
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import paho.mqtt.client as paho
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from paho.mqtt.enums import CallbackAPIVersion
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from deploy.local import tools

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
from deploy.local.process import PidFile, ensure_port_free, spawn, wait_until

BROKER_DIR = Path(__file__).resolve().parents[2] / "broker"
HOST = "127.0.0.1"


@dataclass
class Server:
    """Common part: a directory with ``<name>.pid`` and ``<name>.log`` and a port."""

    root: Path
    port: int
    name: str = field(init=False, default="server")
    port_variable: str = field(init=False, default="")

    @property
    def pid_file(self) -> PidFile:
        return PidFile(self.root / f"{self.name}.pid")

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.name}.log"

    def running_pid(self) -> int | None:
        return self.pid_file.live_pid()

    def healthy(self) -> bool:
        raise NotImplementedError

    def ready(self) -> bool:
        """The process answers (may be less than healthy, e.g. before set-up)."""
        return self.healthy()

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Create directories and configuration before the first start."""

    def _after_ready(self) -> None:
        """One-time set-up once the server answers (e.g. create the bucket)."""

    def _env(self) -> dict[str, str]:
        return {}

    def start(self, timeout: float = 60.0) -> bool:
        """Start unless ours already runs healthy here. True if a process was started."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.running_pid() is not None:
            wait_until(
                self.ready, what=self.name, proc=None, log_path=self.log_path, timeout=timeout
            )
            self._after_ready()
            return False
        ensure_port_free(self.port, self.name, self.port_variable)
        self._prepare()
        proc = spawn(
            self._argv(),
            log_path=self.log_path,
            pid_file=self.pid_file,
            env=self._env(),
            cwd=self.root,
        )
        wait_until(self.ready, what=self.name, proc=proc, log_path=self.log_path, timeout=timeout)
        self._after_ready()
        return True

    def stop(self) -> bool:
        return self.pid_file.stop()


def dynsec_password(password: str, iterations: int = 101) -> dict[str, object]:
    """The password fields of a dynamic-security client (PBKDF2-SHA512, as Mosquitto 2.0)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def mqtt_connack(
    host: str, port: int, username: str, password: str, timeout: float = 5.0
) -> str | None:
    """Connect with MQTT v5 and return the CONNACK reason (``"Success"``), None if no answer."""
    done = threading.Event()
    reason: list[str] = []

    def on_connect(
        client: paho.Client, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        reason.append(str(rc))
        done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        protocol=paho.MQTTv5,
        client_id=f"outpost-probe-{secrets.token_hex(4)}",
    )
    client.username_pw_set(username, password)
    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return None
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return reason[0] if reason else None


@dataclass
class Mosquitto(Server):
    """Mosquitto 2.x with our config from broker/ and a dynamic-security file."""

    backend_username: str = "outpost-backend"
    backend_password: str = ""
    autosave_interval: int = 60
    name: str = field(init=False, default="mosquitto")
    port_variable: str = field(init=False, default="OUTPOST_DEV_MQTT_PORT")

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def dynsec_path(self) -> Path:
        return self.root / "dynsec" / "dynamic-security.json"

    def _prepare(self) -> None:
        if not self.backend_password:
            raise ValueError("Mosquitto needs a backend_password")
        binary = tools.mosquitto()
        (self.root / "data").mkdir(exist_ok=True)
        self.dynsec_path.parent.mkdir(exist_ok=True)
        if not self.dynsec_path.exists():
            self.dynsec_path.write_text(json.dumps(self._dynsec(), indent=2))
        template = (BROKER_DIR / "mosquitto.conf.template").read_text()
        self.conf_path.write_text(
            template.format(
                port=self.port,
                host=HOST,
                data_dir=self.root / "data",
                autosave_interval=self.autosave_interval,
                dynsec_plugin=tools.dynsec_plugin(),
                dynsec_file=self.dynsec_path,
                max_queued_messages=1_000_000,
                max_queued_bytes=512 * 1024 * 1024,
            )
        )
        self._binary = binary
        self._hand_to_broker_user()

    def _dynsec(self) -> dict[str, object]:
        roles = json.loads((BROKER_DIR / "roles.json").read_text())
        backend = {
            "username": self.backend_username,
            "textName": "Outpost backend services",
            "roles": [{"rolename": "outpost-backend"}],
            **dynsec_password(self.backend_password),
        }
        return {
            "clients": [backend],
            "groups": [],
            "roles": roles["roles"],
            "defaultACLAccess": roles["defaultACLAccess"],
        }

    def _hand_to_broker_user(self) -> None:
        """Started as root, Mosquitto drops to the ``mosquitto`` user: it must own its files."""
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            return
        self.root.chmod(0o755)
        for path in [self.root / "data", self.dynsec_path.parent, self.dynsec_path]:
            shutil.chown(path, user.pw_uid, user.pw_gid)
        for path in (self.root / "data").iterdir():
            shutil.chown(path, user.pw_uid, user.pw_gid)
        parent = self.root.parent
        while parent != parent.parent:  # the broker user must be able to reach its folder
            parent.chmod(parent.stat().st_mode | 0o001)
            parent = parent.parent

    def _argv(self) -> list[str]:
        return [self._binary, "-c", str(self.conf_path)]

    def healthy(self) -> bool:
        return (
            mqtt_connack(HOST, self.port, self.backend_username, self.backend_password) == "Success"
        )


@dataclass
class MongoServer(Server):
    """``mongod`` when installed, otherwise FerretDB v1 on SQLite, telemetry off."""

    name: str = field(init=False, default="mongodb")
    port_variable: str = field(init=False, default="OUTPOST_DEV_MONGO_PORT")

    @property
    def url(self) -> str:
        return f"mongodb://{HOST}:{self.port}/"

    @property
    def flavour(self) -> str:
        return "mongod" if tools.mongod() else "ferretdb"

    def _prepare(self) -> None:
        (self.root / "data").mkdir(exist_ok=True)

    def _argv(self) -> list[str]:
        mongod = tools.mongod()
        if mongod:
            return [
                mongod,
                "--dbpath",
                str(self.root / "data"),
                "--port",
                str(self.port),
                "--bind_ip",
                HOST,
                "--quiet",
            ]
        return [
            tools.ferretdb(),
            "--handler=sqlite",
            f"--sqlite-url=file:{self.root / 'data'}/",
            f"--listen-addr={HOST}:{self.port}",
            f"--state-dir={self.root}",
            "--debug-addr=-",  # no extra HTTP listener on a fixed port
            "--telemetry=disable",  # FerretDB reports to an outside host by default
            "--log-level=warn",
        ]

    def _env(self) -> dict[str, str]:
        return {"FERRETDB_TELEMETRY": "disable", "DO_NOT_TRACK": "1"}

    def healthy(self) -> bool:
        client: MongoClient[dict[str, object]] = MongoClient(
            self.url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        try:
            client.admin.command("ping")
        except PyMongoError:
            return False
        finally:
            client.close()
        return True


@dataclass
class S3Server(Server):
    """versitygw with its POSIX backend: real SigV4 checks and presigned-URL expiry."""

    access_key: str = "outpostdev"
    secret_key: str = ""
    bucket: str = "outpost-firmware"
    region: str = "us-east-1"
    name: str = field(init=False, default="s3")
    port_variable: str = field(init=False, default="OUTPOST_DEV_S3_PORT")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def client(self) -> S3Client:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=BotoConfig(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 2},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def _prepare(self) -> None:
        if not self.secret_key:
            raise ValueError("S3Server needs a secret_key")
        (self.root / "data").mkdir(exist_ok=True)

    def _argv(self) -> list[str]:
        return [
            tools.versitygw(),
            "--access",
            self.access_key,
            "--secret",
            self.secret_key,
            "--port",
            f"{HOST}:{self.port}",
            "--region",
            self.region,
            "--quiet",
            "posix",
            str(self.root / "data"),
        ]

    def ready(self) -> bool:
        try:
            urllib.request.urlopen(self.url, timeout=1)
        except urllib.error.HTTPError:
            return True  # it answered (403 for an anonymous request)
        except OSError:
            return False
        return True

    def healthy(self) -> bool:
        if not self.ready():
            return False
        try:
            self.client().head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError):
            return False
        return True

    def _after_ready(self) -> None:
        if not self.healthy():
            self.client().create_bucket(Bucket=self.bucket)


@dataclass
class PythonService(Server):
    """One of our own services (``python -m outpost <command>``) run by the local stack.

    It reads its settings from ``env_file`` (the stack's ``dev.env``) and serves
    ``/healthz`` on ``port``; a service without HTTP (the simulator) passes ``port=0`` and
    counts as healthy while its process runs.
    """

    service: str = ""
    args: tuple[str, ...] = ()
    env_file: Path | None = None
    name: str = field(init=False, default="service")
    port_variable: str = field(init=False, default="OUTPOST_HTTP_PORT")

    def __post_init__(self) -> None:
        self.name = self.service

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "outpost", *self.service.split(), *self.args]

    def _env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.env_file is not None and self.env_file.exists():
            for line in self.env_file.read_text().splitlines():
                key, _, value = line.partition("=")
                if key and not key.startswith("#"):
                    env[key.strip()] = value.strip()
        if self.port:
            env["OUTPOST_HTTP_PORT"] = str(self.port)
        return env

    def start(self, timeout: float = 60.0) -> bool:
        if self.port == 0:  # no HTTP: nothing to check but the process
            self.root.mkdir(parents=True, exist_ok=True)
            if self.running_pid() is not None:
                return False
            spawn(
                self._argv(),
                log_path=self.log_path,
                pid_file=self.pid_file,
                env=self._env(),
                cwd=Path.cwd(),
            )
            return True
        return super().start(timeout)

    def healthy(self) -> bool:
        if self.port == 0:
            return self.running_pid() is not None
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False
