"""The reference agent's diagnostics on a Linux host: ping, interface counters, log upload.

Each one is an edge (a subprocess, ``/proc``, an HTTP PUT); what a device decides about a
command is in :mod:`device.commands`. A WiFi neighbour scan needs a radio and its driver
(``iw dev <if> scan`` as root); the reference agent has none and answers an empty scan,
a real device passes its own ``scan`` callable to :class:`~device.agent.Agent`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from device.errors import DiagnosticsError
from schemas import commands as c

__all__ = ["interface_counters", "no_radios", "ping", "put_object"]

_RTT = re.compile(rb"time[=<]([0-9.]+) ?ms")


def ping(args: c.PingArgs, timeout_s: float = 1.0) -> c.PingOutput:
    """ICMP echo through the system's ``ping``; without one, the time a TCP connection
    to port 443 takes to be accepted or refused (either is an answer from the host)."""
    binary = shutil.which("ping")
    if binary is None:
        return _tcp_ping(args, timeout_s)
    wait = str(max(1, round(timeout_s)))
    try:
        done = subprocess.run(
            [binary, "-n", "-c", str(args.count), "-W", wait, "-i", "0.2", args.target],
            capture_output=True,
            timeout=args.count * (timeout_s + 0.5) + 5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiagnosticsError(f"ping failed: {exc}") from None
    rtts = [float(m) for m in _RTT.findall(done.stdout)][: args.count]
    if done.returncode not in (0, 1):  # 1: no answer, 2: an error (unknown host...)
        raise DiagnosticsError(done.stderr.decode(errors="replace").strip()[:300] or "ping failed")
    return c.PingOutput(target=args.target, sent=args.count, received=len(rtts), rtt_ms=rtts)


def _tcp_ping(args: c.PingArgs, timeout_s: float) -> c.PingOutput:
    rtts: list[float] = []
    for _ in range(args.count):
        started = time.monotonic()
        try:
            with socket.create_connection((args.target, 443), timeout=timeout_s):
                pass
        except ConnectionRefusedError:
            pass
        except OSError:
            continue
        rtts.append(round((time.monotonic() - started) * 1000, 3))
    return c.PingOutput(target=args.target, sent=args.count, received=len(rtts), rtt_ms=rtts)


def interface_counters(
    args: c.CountersArgs, proc: Path = Path("/proc/net/dev")
) -> c.CountersOutput:
    """The kernel's per-interface counters (Linux ``/proc/net/dev``)."""
    try:
        lines = proc.read_text().splitlines()[2:]
    except OSError as exc:
        raise DiagnosticsError(f"cannot read {proc}: {exc}") from None
    fields = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped")
    tx = ("tx_bytes", "tx_packets", "tx_errors", "tx_dropped")
    found: dict[str, dict[str, int]] = {}
    for line in lines:
        name, _, numbers = line.partition(":")
        name = name.strip()
        values = numbers.split()
        if len(values) < 12 or (args.interface and name != args.interface):
            continue
        counts = [int(v) for v in values]
        found[name[:32]] = dict(zip(fields, counts[0:4], strict=True)) | dict(
            zip(tx, counts[8:12], strict=True)
        )
    if args.interface and not found:
        raise DiagnosticsError(f"no interface {args.interface!r}")
    return c.CountersOutput(interfaces=found)


def no_radios(args: c.ScanArgs) -> c.ScanOutput:
    """The reference agent has no radio: every band it was asked for is empty."""
    return c.ScanOutput(bands={band: [] for band in ([args.band] if args.band else [])})


def put_object(url: str, body: bytes, key: str, timeout_s: float = 60.0) -> c.LogsOutput:
    """Upload ``body`` to a presigned S3 PUT URL; the output names what was stored."""
    request = urllib.request.Request(url, data=body, method="PUT")
    request.add_header("Content-Length", str(len(body)))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise DiagnosticsError(f"upload refused: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DiagnosticsError(f"upload failed: {exc}") from None
    return c.LogsOutput(key=key, size=len(body), sha256=hashlib.sha256(body).hexdigest())
