"""Errors of the local stack. Each message is one line that names the fix.

LocalStackError
 ├── ToolMissing      a binary is not installed and cannot be installed here
 ├── PortBusy         a port we want is taken by a process we did not start
 └── StartFailed      a server exited or did not answer in time
"""


class LocalStackError(Exception):
    """Base class; ``str()`` is a single line meant for a person."""


class ToolMissing(LocalStackError):
    pass


class PortBusy(LocalStackError):
    pass


class StartFailed(LocalStackError):
    pass
