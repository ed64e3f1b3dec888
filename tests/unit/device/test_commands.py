"""What a device decides about a command, its simulated outputs and its diagnostics."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from device import commands as dc
from device import diagnostics
from device.errors import DiagnosticsError
from schemas import commands as c
from schemas.protocol import CommandRequest, CommandStatus, OrderKey, encode

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
TOPIC = "devices/ap-0001/commands/c1"


def request(name: str = "ping", **args: object) -> CommandRequest:
    return CommandRequest(
        command_id="c1", name=name, args=args, issued_at=T0, expires_at=T0 + timedelta(minutes=1)
    )


def test_a_command_runs_once_and_never_late() -> None:
    handled = dc.Handled()
    run = dc.decide(request(target="192.0.2.1"), T0, handled)
    assert run.action is dc.Action.RUN
    assert run.args == c.PingArgs(target="192.0.2.1")
    handled.add("c1")
    assert dc.decide(request(target="192.0.2.1"), T0, handled).action is dc.Action.IGNORE
    late = dc.decide(request(target="192.0.2.1"), T0 + timedelta(minutes=1), dc.Handled())
    assert late.action is dc.Action.EXPIRED


def test_unknown_names_and_bad_args_are_answered_at_once() -> None:
    unknown = dc.decide(request("selftest"), T0, dc.Handled())
    assert (unknown.action, unknown.status) == (dc.Action.ANSWER, CommandStatus.UNKNOWN)
    bad = dc.decide(request("ping", count=3), T0, dc.Handled())
    assert (bad.action, bad.status) == (dc.Action.ANSWER, CommandStatus.REJECTED)
    assert "target" in (bad.error or "")
    plain = dc.decide(
        request("logs", upload_url="http://evil.example/x", key="logs/a"), T0, dc.Handled()
    )
    assert plain.status is CommandStatus.REJECTED
    only = dc.decide(request("reboot"), T0, dc.Handled(), known=frozenset({"ping"}))
    assert only.status is CommandStatus.UNKNOWN


def test_handled_ids_are_bounded_oldest_first() -> None:
    handled = dc.Handled.of(["a", "b", "c"], capacity=2)
    assert "a" not in handled
    assert "b" in handled
    assert "c" in handled


def test_parse_gives_the_request_or_why_not() -> None:
    assert dc.parse(TOPIC, encode(request(target="x1"))) == request(target="x1")
    assert "Expecting" in str(dc.parse(TOPIC, b"{"))
    assert isinstance(dc.parse(TOPIC, b'{"v": 1}'), str)


def test_results_and_simulated_outputs_are_valid() -> None:
    rng = random.Random(1)
    ping = dc.simulated_ping(c.PingArgs(target="x1", count=4), rng)
    assert ping.received == len(ping.rtt_ms) == 4
    scan = dc.simulated_scan(c.ScanArgs(), rng)
    assert set(scan.bands) == {"2.4GHz", "5GHz", "6GHz"}
    assert set(dc.simulated_scan(c.ScanArgs(band="6GHz"), rng).bands) == {"6GHz"}
    counters = dc.simulated_counters(c.CountersArgs(interface="eth9"), rng)
    assert set(counters.interfaces) == {"eth9"}
    message = dc.result(
        "ap-0001", OrderKey(session=1, seq=2), T0, "c1", CommandStatus.SUCCEEDED, scan
    )
    assert message.output["bands"]
    assert (
        dc.result(
            "ap-0001", OrderKey(session=1, seq=3), T0, "c1", CommandStatus.FAILED, error="x" * 2000
        ).error
        == "x" * 1000
    )
    log = dc.simulated_log("ap-0001", 10_000)
    assert len(log) == 10_000
    assert log == dc.simulated_log("ap-0001", 10_000)
    assert log != dc.simulated_log("ap-0002", 10_000)


def test_interface_counters_from_proc(tmp_path: Path) -> None:
    proc = tmp_path / "dev"
    proc.write_text(
        "Inter-|   Receive |  Transmit\n"
        " face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n"
        "    lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0\n"
        "  eth0: 5000 40 1 2 0 0 0 0 7000 50 3 4 0 0 0 0\n"
    )
    found = diagnostics.interface_counters(c.CountersArgs(), proc)
    assert found.interfaces["eth0"] == {
        "rx_bytes": 5000,
        "rx_packets": 40,
        "rx_errors": 1,
        "rx_dropped": 2,
        "tx_bytes": 7000,
        "tx_packets": 50,
        "tx_errors": 3,
        "tx_dropped": 4,
    }
    assert set(diagnostics.interface_counters(c.CountersArgs(interface="lo"), proc).interfaces) == {
        "lo"
    }
    with pytest.raises(DiagnosticsError, match="no interface"):
        diagnostics.interface_counters(c.CountersArgs(interface="wlan7"), proc)
    with pytest.raises(DiagnosticsError, match="cannot read"):
        diagnostics.interface_counters(c.CountersArgs(), tmp_path / "missing")


def test_no_radios_and_failed_uploads() -> None:
    assert diagnostics.no_radios(c.ScanArgs(band="5GHz")).bands == {"5GHz": []}
    with pytest.raises(DiagnosticsError, match="upload failed"):
        diagnostics.put_object("http://127.0.0.1:9/x", b"x", "logs/k", timeout_s=2)
