"""The import layers CI enforces (pyproject's import-linter contract), and the settings
table it checks: both must fail when broken, so each is shown failing once here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cli.settings import END, GROUPS, START, table

REPO = Path(__file__).resolve().parents[2]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
PACKAGES = ("cli", "deploy", "bridge", "scheduler", "api", "device", "outpost", "schemas")


def _lint(cwd: Path, *, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert LINT is not None, "lint-imports is not installed"
    env = {**os.environ}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_repository_keeps_its_layers():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def _fake_tree(root: Path, imports: dict[str, str]) -> None:
    """Our package names with the real contract, and the given imports in them."""
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = ["[tool.importlinter]", f"root_packages = {contract['root_packages']!r}"]
    for c in contract["contracts"]:
        lines += [
            "[[tool.importlinter.contracts]]",
            f"name = {c['name']!r}",
            f"type = {c['type']!r}",
            f"layers = {c['layers']!r}",
        ]
    (root / "pyproject.toml").write_text("\n".join(lines).replace("'", '"') + "\n")
    for package in PACKAGES:
        (root / package).mkdir()
        (root / package / "__init__.py").write_text(imports.get(package, ""))


@pytest.mark.parametrize(
    ("importer", "imported"),
    [("bridge", "api"), ("outpost", "scheduler"), ("schemas", "outpost"), ("deploy", "device")],
)
def test_a_wrong_way_import_fails_the_check(tmp_path, importer, imported):
    _fake_tree(tmp_path, {importer: f"import {imported}\n"})
    result = _lint(tmp_path, pythonpath=tmp_path)
    assert result.returncode == 1, result.stdout[-2000:]
    assert f"{importer} is not allowed to import {imported}" in result.stdout


def test_the_fake_tree_passes_without_the_violation(tmp_path):
    _fake_tree(tmp_path, {"cli": "import bridge\nimport api\n", "bridge": "import outpost\n"})
    assert _lint(tmp_path, pythonpath=tmp_path).returncode == 0


def test_every_setting_is_described_and_the_readme_table_is_current():
    undocumented = [
        f"{g.__name__}.{name}"
        for g in GROUPS
        for name, f in g.model_fields.items()
        if not f.description
    ]
    assert undocumented == []
    readme = (REPO / "README.md").read_text()
    assert f"{START}\n{table()}\n{END}" in readme
