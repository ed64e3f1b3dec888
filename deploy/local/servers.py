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
import hmac
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
import paho.mqtt.client as paho
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from paho.mqtt.enums import CallbackAPIVersion
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from deploy.local import tools
from deploy.local.errors import StartFailed, ToolMissing

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
from deploy.local.process import PidFile, ensure_port_free, free_port, spawn, wait_until
from deploy.local.tls import LocalCa, local_ca

BROKER_DIR = Path(__file__).resolve().parents[2] / "broker"


def _broker_roles() -> dict[str, Any]:
    roles: dict[str, Any] = json.loads((BROKER_DIR / "roles.json").read_text())
    return roles


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

    def _user(self) -> pwd.struct_passwd | None:
        """The account to run the process as (None: ours)."""
        return None

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
            user=self._user(),
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
    tls_port: int = 0  # the devices' TLS listener; 0: a free port, chosen once
    name: str = field(init=False, default="mosquitto")
    port_variable: str = field(init=False, default="OUTPOST_DEV_MQTT_PORT")

    def __post_init__(self) -> None:
        if not self.tls_port:
            self.tls_port = free_port()

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    @property
    def tls_url(self) -> str:
        """Where devices connect: MQTT over TLS, verified with :attr:`ca_file`."""
        return f"mqtts://{HOST}:{self.tls_port}"

    @property
    def tls(self) -> LocalCa:
        return local_ca(self.root / "tls")

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    @property
    def conf_path(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def dynsec_path(self) -> Path:
        return self.root / "dynsec" / "dynamic-security.json"

    def _prepare(self) -> None:
        if not self.backend_password:
            raise ValueError("Mosquitto needs a backend_password")
        ensure_port_free(self.tls_port, "mosquitto (TLS)", "OUTPOST_DEV_MQTT_TLS_PORT")
        binary = tools.mosquitto()
        (self.root / "data").mkdir(exist_ok=True)
        self.dynsec_path.parent.mkdir(exist_ok=True)
        self._write_dynsec()
        self.dynsec_path.parent.chmod(0o700)
        template = (BROKER_DIR / "mosquitto.conf.template").read_text()
        tls = self.tls
        self.conf_path.write_text(
            template.format(
                port=self.port,
                host=HOST,
                tls_port=self.tls_port,
                tls_host=HOST,
                ca_file=tls.ca_file,
                cert_file=tls.cert_file,
                key_file=tls.key_file,
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

    def account(self, role: str) -> tuple[str, str]:
        """Username and password of a backend role (``bridge``, ``scheduler``, ``api``,
        ``observer``, ``admin``), as in ``broker/roles.json``. The admin account is
        ``backend_username``/``backend_password``; the others' passwords are derived from
        it, so they stay the same across restarts."""
        if role == "admin":
            return self.backend_username, self.backend_password
        accounts = _broker_roles()["accounts"]
        rolename = f"outpost-{role}"
        if rolename not in accounts:
            raise ValueError(f"no backend role {role!r}")
        derived = hmac.new(self.backend_password.encode(), rolename.encode(), "sha256")
        return accounts[rolename], base64.urlsafe_b64encode(derived.digest()[:18]).decode()

    def _write_dynsec(self) -> None:
        """Backend roles and accounts as ``broker/roles.json`` says, at every start (the
        broker is stopped); device roles and clients the api made are left as they are."""
        spec = _broker_roles()
        current: dict[str, Any] = (
            json.loads(self.dynsec_path.read_text())
            if self.dynsec_path.exists()
            else {"clients": [], "groups": [], "roles": []}
        )
        ours = {r["rolename"] for r in spec["roles"]} | {"outpost-backend"}
        roles = [r for r in current.get("roles", []) if r.get("rolename") not in ours]
        usernames: dict[str, str] = {}
        for rolename, username in spec["accounts"].items():
            usernames[username] = rolename
        clients = [c for c in current.get("clients", []) if c.get("username") not in usernames]
        for username, rolename in usernames.items():
            role = rolename.removeprefix("outpost-")
            _, password = self.account(role)
            clients.append(
                {
                    "username": username,
                    "textName": f"Outpost {role}",
                    "roles": [{"rolename": rolename}],
                    **dynsec_password(password),
                }
            )
        current |= {
            "clients": clients,
            "roles": [*roles, *spec["roles"]],
            "defaultACLAccess": spec["defaultACLAccess"],
        }
        self.dynsec_path.touch(mode=0o600)  # password hashes: the broker's user only
        self.dynsec_path.chmod(0o600)
        self.dynsec_path.write_text(json.dumps(current, indent=2))

    def _hand_to_broker_user(self) -> None:
        """Started as root, Mosquitto drops to the ``mosquitto`` user: it must own its files."""
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            return
        self.root.chmod(0o755)
        tls = self.tls
        owned = [self.root / "data", self.dynsec_path.parent, self.dynsec_path, tls.key_file]
        for path in owned:
            shutil.chown(path, user.pw_uid, user.pw_gid)
        tls.ca_file.parent.chmod(0o755)
        for path in (self.root / "data").iterdir():
            shutil.chown(path, user.pw_uid, user.pw_gid)
        _reachable(self.root)  # the broker user must be able to reach its folder

    def _argv(self) -> list[str]:
        return [self._binary, "-c", str(self.conf_path)]

    def healthy(self) -> bool:
        return (
            mqtt_connack(HOST, self.port, self.backend_username, self.backend_password) == "Success"
        )


# Run in the ``ferretdb`` database of our private cluster: every table FerretDB creates
# for a collection gets a GIN index on its ``_id`` expression. FerretDB v1 filters with
# ``_jsonb->'_id' @> '"<id>"'``, which its own btree index on ``_jsonb->'_id'`` cannot
# serve, so without this every statement with an ``_id`` scans the whole collection
# (measured here: 57 updates/s at 20,000 documents; with the index ~1,000/s, flat).
# Custom plans (plan_cache_mode) let the planner see the key FerretDB passes as a
# parameter and so match the index expression.
ID_INDEX_TRIGGER = """
CREATE OR REPLACE FUNCTION outpost_index_id() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE created record;
BEGIN
  FOR created IN SELECT objid, object_identity FROM pg_event_trigger_ddl_commands()
                 WHERE command_tag = 'CREATE TABLE' LOOP
    IF EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = created.objid AND attname = '_jsonb') THEN
      EXECUTE format('CREATE INDEX ON %s USING gin ((_jsonb -> ''_id'') jsonb_path_ops) '
                     'WITH (fastupdate = off)', created.object_identity);
    END IF;
  END LOOP;
END $$;
DROP EVENT TRIGGER IF EXISTS outpost_index_id;
CREATE EVENT TRIGGER outpost_index_id ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
  EXECUTE FUNCTION outpost_index_id();
"""


# FerretDB's connections to PostgreSQL. Measured in the scale-out drill
# (bench/scale_out_drill.py, 2026-11-30): with 40, three bridges (each then up to 16
# updates at once: OUTPOST_MONGO_WRITE_CONCURRENCY) plus the schedulers' and apis'
# work stalled FerretDB for good: 1,152 of its goroutines waited for a pool connection
# inside update commands while PostgreSQL showed all 40 connections idle (checked out by
# updates that were themselves waiting for a second one). Kept well above what every
# instance of a local stack can have in flight; PostgreSQL allows 200 (max_connections).
FERRETDB_POOL = 150


@dataclass
class Postgres(Server):
    """Debian's PostgreSQL as FerretDB's backend: a private cluster in ``root/data``.

    It listens on a Unix socket in ``root`` only (``port`` names the socket file; no TCP
    listener), trusts local connections (the folder is private to the cluster's user)
    and runs as the ``postgres`` user when we are root, since PostgreSQL refuses root.
    ``durable=False`` (the test harness) turns fsync off: a crash may lose the cluster,
    which a test run does not keep anyway.
    """

    durable: bool = True
    database: str = "ferretdb"
    name: str = field(init=False, default="postgres")
    port_variable: str = field(init=False, default="OUTPOST_DEV_MONGO_PORT")

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self) -> str:
        """The pgx URL FerretDB connects with (socket folder as ``host``)."""
        return (
            f"postgres:///{self.database}?host={self.socket_dir}&port={self.port}"
            f"&user=postgres&pool_max_conns={FERRETDB_POOL}"
        )

    def _owner(self) -> pwd.struct_passwd | None:
        """The account the cluster runs as: ``postgres`` when we are root, else ourselves."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise ToolMissing("no postgres user; run: apt-get install postgresql") from None

    def _prepare(self) -> None:
        self._bin = tools.postgres_bindir()
        owner = self._owner()
        if owner is not None:
            shutil.chown(self.root, owner.pw_uid, owner.pw_gid)
            _reachable(self.root)
        self.root.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            argv = [
                str(self._bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
            tools.run_as(argv, owner, what="initdb", fix="check the postgresql package")
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "port": str(self.port),
            "max_connections": "200",
            "shared_buffers": "'128MB'",
            "plan_cache_mode": "force_custom_plan",
            "synchronous_commit": "off",
            "fsync": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "logging_collector": "off",
            # every FerretDB update writes a new row version: vacuum often, or lookups
            # slow down as dead versions pile up (measured: -30 % after 20,000 updates)
            "autovacuum_naptime": "'2s'",
            "autovacuum_vacuum_scale_factor": "0.05",
            "autovacuum_vacuum_cost_delay": "0",
            "log_min_messages": "warning",
        }
        (self.data_dir / "outpost.conf").write_text(
            "".join(f"{k} = {v}\n" for k, v in settings.items())
        )
        conf = self.data_dir / "postgresql.conf"
        if "include_if_exists = 'outpost.conf'" not in conf.read_text():
            with conf.open("a") as out:
                out.write("\ninclude_if_exists = 'outpost.conf'\n")

    def _argv(self) -> list[str]:
        return [str(self._bin / "postgres"), "-D", str(self.data_dir)]

    def stop(self) -> bool:
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM waits for every client to leave
        return self.pid_file.stop(signal.SIGINT)

    def _user(self) -> pwd.struct_passwd | None:
        return self._owner()

    def _psql(self, database: str, sql: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(tools.postgres_bindir() / "psql"),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAtc",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def ready(self) -> bool:
        return self._psql("postgres", "SELECT 1").returncode == 0

    def healthy(self) -> bool:
        return self._psql(self.database, "SELECT 1").returncode == 0

    def _after_ready(self) -> None:
        if not self.healthy():
            created = self._psql("postgres", f"CREATE DATABASE {self.database}")
            if created.returncode != 0:
                raise StartFailed(f"creating database {self.database}: {created.stderr[-200:]}")
        indexed = self._psql(self.database, ID_INDEX_TRIGGER)
        if indexed.returncode != 0:
            raise StartFailed(f"creating the _id index trigger: {indexed.stderr[-200:]}")


@dataclass
class MongoServer(Server):
    """FerretDB v1.24.2 on a private PostgreSQL cluster (``root/postgres``), telemetry off.

    ``start`` starts the cluster first, ``stop`` stops it last. The MongoDB wire protocol
    listens on ``port``, on loopback.
    """

    durable: bool = True
    name: str = field(init=False, default="mongodb")
    port_variable: str = field(init=False, default="OUTPOST_DEV_MONGO_PORT")

    def __post_init__(self) -> None:
        self.backend = Postgres(self.root / "postgres", self.port, durable=self.durable)

    @property
    def url(self) -> str:
        return f"mongodb://{HOST}:{self.port}/"

    def start(self, timeout: float = 60.0) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        _reachable(self.root)
        self.backend.start(timeout)
        return super().start(timeout)

    def stop(self) -> bool:
        stopped = super().stop()
        self.backend.stop()
        return stopped

    def _argv(self) -> list[str]:
        return [
            tools.ferretdb(),
            "--handler=postgresql",
            f"--postgresql-url={self.backend.url()}",
            f"--listen-addr={HOST}:{self.port}",
            f"--state-dir={self.root}",
            "--debug-addr=-",  # no extra HTTP listener on a fixed port
            "--telemetry=disable",  # FerretDB reports to an outside host by default
            "--log-level=warn",
        ]

    def _env(self) -> dict[str, str]:
        return {"FERRETDB_TELEMETRY": "disable", "DO_NOT_TRACK": "1"}

    def healthy(self) -> bool:
        return mongo_ping(self.url)


@dataclass
class ExternalMongo(Server):
    """A MongoDB (or FerretDB) someone else runs, given by ``OUTPOST_MONGO_URL``.

    Nothing is started or stopped; it only answers ``healthy``.
    """

    external_url: str = ""
    name: str = field(init=False, default="mongodb")
    port_variable: str = field(init=False, default="OUTPOST_MONGO_URL")

    @property
    def url(self) -> str:
        return self.external_url

    def running_pid(self) -> int | None:
        return None

    def start(self, timeout: float = 60.0) -> bool:
        wait_until(
            self.healthy,
            what=f"MongoDB at {_redacted(self.url)}",
            proc=None,
            log_path=self.root / "none.log",
            timeout=timeout,
        )
        return False

    def stop(self) -> bool:
        return False

    def healthy(self) -> bool:
        return mongo_ping(self.url)


def database_server(
    root: Path, port: int, *, durable: bool = True, external_url: str | None = None
) -> MongoServer | ExternalMongo:
    """The stack's database: ``external_url`` (bring your own MongoDB) or embedded FerretDB."""
    if external_url:
        return ExternalMongo(root, 0, external_url=external_url)
    return MongoServer(root, port, durable=durable)


def mongo_ping(url: str) -> bool:
    client: MongoClient[dict[str, object]] = MongoClient(
        url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
    )
    try:
        client.admin.command("ping")
    except PyMongoError:
        return False
    finally:
        client.close()
    return True


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def _reachable(path: Path) -> None:
    """Let other accounts (the broker's, the cluster's) traverse the folders above ``path``."""
    if os.geteuid() != 0:
        return
    parent = path.parent
    while parent != parent.parent:
        parent.chmod(parent.stat().st_mode | 0o001)
        parent = parent.parent


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
            "--port",
            f"{HOST}:{self.port}",
            "--region",
            self.region,
            "--quiet",
            "posix",
            str(self.root / "data"),
        ]

    def _env(self) -> dict[str, str]:
        # in the environment, not on the command line: ps shows every argument to all users
        return {"ROOT_ACCESS_KEY": self.access_key, "ROOT_SECRET_KEY": self.secret_key}

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
    """One of our own services (``python -m cli <command>``) run by the local stack.

    It reads its settings from ``env_file`` (the stack's ``dev.env``) and serves
    ``/healthz`` on ``port``; a service without HTTP (the simulator) passes ``port=0`` and
    counts as healthy while its process runs.
    """

    service: str = ""
    args: tuple[str, ...] = ()
    env_file: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # wins over env_file (own account)
    name: str = field(init=False, default="service")
    port_variable: str = field(init=False, default="OUTPOST_HTTP_PORT")

    def __post_init__(self) -> None:
        self.name = self.service

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "cli", *self.service.split(), *self.args]

    def _env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.env_file is not None and self.env_file.exists():
            for line in self.env_file.read_text().splitlines():
                key, _, value = line.partition("=")
                if key and not key.startswith("#"):
                    env[key.strip()] = value.strip()
        env |= self.env
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
