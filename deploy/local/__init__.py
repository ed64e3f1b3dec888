"""Local servers for development and tests: Mosquitto, MongoDB (or FerretDB) and S3.

``Stack`` is what ``outpost dev`` drives; the test harness uses the server classes
directly on free ports and temporary folders.
"""

from deploy.local.errors import LocalStackError, PortBusy, StartFailed, ToolMissing
from deploy.local.process import PidFile, free_port
from deploy.local.servers import MongoServer, Mosquitto, S3Server, Server, mqtt_connack
from deploy.local.stack import DevSettings, Stack, Status

__all__ = [
    "DevSettings",
    "LocalStackError",
    "MongoServer",
    "Mosquitto",
    "PidFile",
    "PortBusy",
    "S3Server",
    "Server",
    "Stack",
    "StartFailed",
    "Status",
    "ToolMissing",
    "free_port",
    "mqtt_connack",
]
