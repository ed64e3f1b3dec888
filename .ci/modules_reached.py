"""Fail when a production module was never executed by the whole suite.

Reads the JSON report ``coverage json`` wrote (argument 1) and lists every measured file
with no executed line: the suite must reach each module, not only the total.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(report: Path) -> int:
    files = json.loads(report.read_text())["files"]
    unreached = sorted(
        name
        for name, data in files.items()
        if data["summary"]["num_statements"] and not data["summary"]["covered_lines"]
    )
    for name in unreached:
        print(f"never executed: {name}")  # noqa: T201
    print(f"{len(files) - len(unreached)} of {len(files)} modules reached")  # noqa: T201
    return 1 if unreached else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
