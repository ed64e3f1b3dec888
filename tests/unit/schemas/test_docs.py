"""docs/asyncapi.json is current and consistent; every example in docs/protocol.md is valid."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from schemas.asyncapi import DOCUMENT_PATH, build_document, is_current, render
from schemas.cli import app
from schemas.protocol import MAX_PAYLOAD_BYTES, parse_backend_message, parse_device_message
from schemas.topics import Channel, parse

PROTOCOL_MD = DOCUMENT_PATH.parent / "protocol.md"


def test_checked_in_asyncapi_document_is_current() -> None:
    assert is_current(), "docs/asyncapi.json is stale: run `outpost schemas asyncapi`"


def test_cli_writes_and_checks(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.json"
    runner = CliRunner()
    stale = runner.invoke(app, ["asyncapi", "--check", "--output", str(target)])
    assert stale.exit_code == 1
    assert "stale" in stale.output
    assert runner.invoke(app, ["asyncapi", "--output", str(target)]).exit_code == 0
    assert target.read_text(encoding="utf-8") == render()
    assert runner.invoke(app, ["asyncapi", "--check", "--output", str(target)]).exit_code == 0
    target.write_text(render().replace('"3.0.0"', '"3.0.1"', 1), encoding="utf-8")
    assert runner.invoke(app, ["asyncapi", "--check", "--output", str(target)]).exit_code == 1


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves() -> None:
    document = build_document()
    found = refs(document)
    assert len(found) > 20
    for ref in found:
        assert resolve(document, ref) is not None


def test_document_covers_every_channel_with_its_topic_and_limits() -> None:
    document = build_document()
    assert document["asyncapi"] == "3.0.0"
    for channel in Channel:
        address = document["channels"][channel.value]["address"]
        concrete = (
            address.replace("{deviceId}", "ap-0001")
            .replace("{jobId}", "j1")
            .replace("{commandId}", "c1")
        )
        assert parse(concrete).channel is channel
        message = document["components"]["messages"][channel.value]
        assert message["x-max-payload-bytes"] == MAX_PAYLOAD_BYTES[channel]
    actions = {
        op["channel"]["$ref"].rsplit("/", 1)[1]: op["action"]
        for op in document["operations"].values()
    }
    device_channels = {c.value: "send" if c.from_device else "receive" for c in Channel}
    provisioning = {"provisionRequest": "send", "provisionReply": "receive"}
    assert actions == device_channels | provisioning


def test_document_examples_are_valid_payloads() -> None:
    document = build_document()
    for channel in Channel:
        address = document["channels"][channel.value]["address"]
        topic = (
            address.replace("{deviceId}", "ap-lobby-0042")
            .replace("{jobId}", "rollout-7f3a-1")
            .replace("{commandId}", "6566f0a1c2d3e4f5a6b7c8d9")
        )
        for example in document["components"]["messages"][channel.value]["examples"]:
            check_example(topic, example["payload"])


def check_example(topic: str, payload: dict[str, Any]) -> None:
    raw = json.dumps(payload).encode()
    if parse(topic).channel.from_device:
        parse_device_message(topic, raw)
    else:
        parse_backend_message(topic, raw)


def markdown_examples() -> list[tuple[str, str]]:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    return re.findall(r"Topic: `([^`]+)`\n+```json\n(.*?)\n```", text, flags=re.DOTALL)


def test_protocol_page_has_one_example_per_channel() -> None:
    channels = [parse(topic).channel for topic, _ in markdown_examples()]
    assert sorted(channels) == sorted(Channel)


@pytest.mark.parametrize(("topic", "body"), markdown_examples())
def test_protocol_page_example_is_valid(topic: str, body: str) -> None:
    check_example(topic, json.loads(body))


def test_protocol_page_size_limits_match_the_code() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(devices/[^`]+)` \| [^|]+ \| [^|]+ \| (\d+) \|", text, flags=re.M)
    limits = {
        parse(
            t.replace("{id}", "ap-0001").replace("{job_id}", "j1").replace("{command_id}", "c1")
        ).channel: int(n)
        for t, n in rows
    }
    assert limits == MAX_PAYLOAD_BYTES
