"""Starting, watching and stopping the server processes we own.

A process is started detached (its own session) with its output in a log file, and its
PID is written next to it together with the executable's name and the process's start
time, so that ``stop`` only ever signals a process that is still the one we started: PIDs
wrap (``pid_max`` is 32,768 on many machines, and a test run uses ~1,000 a minute), and a
name alone (``python``) matches any other Python process that got the number.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.local.errors import PortBusy, StartFailed

__all__ = [
    "PidFile",
    "ensure_port_free",
    "free_port",
    "port_is_free",
    "spawn",
    "use_port_range",
    "wait_until",
]


_ports: itertools.cycle[int] | None = None
_ports_size = 0


def use_port_range(first: int, last: int) -> None:
    """Make :func:`free_port` hand out ports of ``first``..``last`` in turn (skipping
    busy ones) instead of asking the kernel.

    For processes that start many servers next to other such processes (the test
    workers): a port the kernel picks is free only until someone binds it, and the
    server we pass it to binds it a second or two later. Meanwhile the kernel may give
    the same number to another process asking, or to an outgoing connection (it picks
    both from the ephemeral range). Disjoint ranges below the ephemeral range, one per
    process, leave nobody else to take the port in between.
    """
    global _ports, _ports_size
    start = random.randint(first, last)  # two runs given the same range rarely meet
    _ports = itertools.cycle([*range(start, last + 1), *range(first, start)])
    _ports_size = last - first + 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now: the next free one of the range set by
    :func:`use_port_range`, else one the kernel picks."""
    if _ports is not None:
        for _ in range(_ports_size):
            port = next(_ports)
            if port_is_free(port, host):
                return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        picked: int = sock.getsockname()[1]
        return picked


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat`` field 22), None
    if no such process or it is a zombie. With the PID it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": the name may hold spaces
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass(frozen=True)
class PidFile:
    path: Path

    def write(self, pid: int, executable: str) -> None:
        entry = {"pid": pid, "exe": Path(executable).name, "started": start_ticks(pid)}
        self.path.write_text(json.dumps(entry))

    def read(self) -> tuple[int, str, int | None] | None:
        try:
            data = json.loads(self.path.read_text())
            started = data.get("started")
            return int(data["pid"]), str(data["exe"]), None if started is None else int(started)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def live_pid(self) -> int | None:
        """The PID if that process is alive and is still the one we started."""
        entry = self.read()
        if entry is None:
            return None
        pid, exe, started = entry
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if not cmdline or Path(cmdline[0].decode(errors="replace")).name != exe:
            return None  # the PID was reused by another program
        now = start_ticks(pid)
        if now is None or (started is not None and now != started):
            return None  # a zombie, or the PID reused by another process of the same program
        return pid

    def stop(self, how: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> bool:
        """``how`` (SIGTERM), then SIGKILL after ``timeout``. True if a process was stopped."""
        pid = self.live_pid()
        if pid is None:
            self.path.unlink(missing_ok=True)
            return False
        os.kill(pid, how)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.live_pid() is not None:
            time.sleep(0.05)
        if self.live_pid() is not None:
            os.kill(pid, signal.SIGKILL)
            while self.live_pid() is not None:
                time.sleep(0.05)
        self.path.unlink(missing_ok=True)
        return True


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    pid_file: PidFile,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: pwd.struct_passwd | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached from our terminal, output appended to ``log_path``.

    ``user``: run as that account (we are root), e.g. PostgreSQL, which refuses root.
    """
    as_user: dict[str, object] = {}
    if user is not None:
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = {**(env or {}), "HOME": user.pw_dir, "USER": user.pw_name}
    with log_path.open("ab") as log:
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            **as_user,
        )
    pid_file.write(proc.pid, argv[0])
    return proc


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    proc: subprocess.Popen[bytes] | None,
    log_path: Path,
    timeout: float = 30.0,
) -> None:
    """Poll ``check`` until it is true; fail fast if ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise StartFailed(f"{what} exited with code {proc.returncode}: {_last_line(log_path)}")
        if check():
            return
        if time.monotonic() > deadline:
            raise StartFailed(f"{what} did not answer within {timeout:.0f}s (log: {log_path})")
        time.sleep(0.1)


def ensure_port_free(port: int, what: str, variable: str) -> None:
    if not port_is_free(port):
        raise PortBusy(
            f"port {port} for {what} is already in use by another process; "
            f"stop it or choose another port with {variable}"
        )


def _last_line(log_path: Path) -> str:
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"
