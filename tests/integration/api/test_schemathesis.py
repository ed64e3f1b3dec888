"""Property-based run of the OpenAPI spec against the running api (a real ``outpost api``
process on a free port, with the session's broker, database and S3): no 5xx, and every
response conforms to the documented status codes, media types, headers and schemas.

Phases: examples, coverage (boundary and missing values), fuzzing, and stateful (the
document's OpenAPI links: register a device, read its config, set its overrides with the
ETag it got, ...). The run uses one admin token, which the stateful phase cannot revoke
(a token never revokes itself). Run time is bounded by ``MAX_EXAMPLES`` (per operation)
and the stateful numbers in ``schemathesis.toml``; each run logs its response counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.api.api_process import running_api

pytestmark = pytest.mark.integration
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "missing_required_header",
        "allow_header_conformance",
        "unsupported_method",
    )
)
# Per operation, for the examples, coverage and fuzzing phases; the stateful phase has its
# own numbers in schemathesis.toml. Together about 3,500 requests in 1.5-2 minutes on two
# busy CPUs (the last run's counts are logged).
MAX_EXAMPLES = 8


def command(url: str, token: str, folder: Path) -> list[str]:
    return [
        str(SCHEMATHESIS),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "1",
        "--no-shrink",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(folder / "events.ndjson"),
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "-H",
        f"Authorization: Bearer {token}",
    ]


def tool_env() -> dict[str, str]:
    """schemathesis' environment: not measured by coverage (none of our code runs in it,
    and tracing Hypothesis doubles its CPU time), and a Hypothesis folder that outlives the
    run (its Unicode tables, built in ~15 s of CPU when missing; the run keeps no examples:
    ``--generation-database none``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS_")}
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(cache / "outpost" / "hypothesis")
    return env


def statuses(events: Path) -> Counter[str]:
    """Responses by status class, from schemathesis' own event log."""
    found: Counter[str] = Counter()
    for line in events.read_text().splitlines():
        for status in _statuses(json.loads(line)):
            found[f"{status // 100}xx"] += 1
    return found


def _statuses(node: object) -> list[int]:
    if isinstance(node, dict):
        out = []
        if isinstance(node.get("status_code"), int) and "elapsed" in node:
            out.append(node["status_code"])
        for value in node.values():
            out += _statuses(value)
        return out
    if isinstance(node, list):
        return [s for item in node for s in _statuses(item)]
    return []


@pytest.mark.slow
async def test_openapi_property_run_finds_no_5xx_or_schema_violation(broker, mongo, s3, tmp_path):
    async with running_api(broker, mongo, s3, tmp_path) as api:
        started = time.monotonic()
        fuzz = await asyncio.create_subprocess_exec(
            *command(api.url, api.token, tmp_path),
            cwd=tmp_path,
            env=tool_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(400):
                output, _ = await fuzz.communicate()
        finally:
            if fuzz.returncode is None:
                fuzz.kill()
                await fuzz.wait()
        report = output.decode(errors="replace")[-6000:]
        seen = statuses(tmp_path / "events.ndjson")
        logging.getLogger(__name__).warning(
            "schemathesis took %.0fs, responses %s\n%s",
            time.monotonic() - started,
            dict(seen),
            report,
        )
        assert fuzz.returncode == 0, report
        assert seen["5xx"] == 0
    errors = api.log.read_text()
    assert "unhandled error" not in errors, errors[-3000:]
