"""Local servers for development and tests: Mosquitto, FerretDB on PostgreSQL, and S3.

``Stack`` is what ``outpost dev`` drives; the test harness uses the server classes
directly on free ports and temporary folders.
"""

from deploy.local.errors import LocalStackError, PortBusy, StartFailed, ToolMissing
from deploy.local.process import PidFile, free_port
from deploy.local.servers import (
    ExternalMongo,
    MongoServer,
    Mosquitto,
    Postgres,
    S3Server,
    Server,
    database_server,
    mqtt_connack,
)
from deploy.local.stack import DevSettings, Stack, Status

__all__ = [
    "DevSettings",
    "ExternalMongo",
    "LocalStackError",
    "MongoServer",
    "Mosquitto",
    "PidFile",
    "PortBusy",
    "Postgres",
    "S3Server",
    "Server",
    "Stack",
    "StartFailed",
    "Status",
    "ToolMissing",
    "database_server",
    "free_port",
    "mqtt_connack",
]
