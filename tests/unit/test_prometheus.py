"""Alert rules: promtool accepts and passes them, and every alert is tested both ways."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from deploy.local import tools
from tests.promql import DASHBOARDS, dashboard_expressions, plain

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools.promtool(), *map(str, args)], capture_output=True, text=True)


def test_promtool_checks_and_passes_the_rules():
    checked = _promtool("check", "rules", *RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", *TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_firing_and_a_silent_case():
    alerts = {
        rule["alert"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    firing: set[str] = set()
    silent: set[str] = set()
    for path in TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert alerts - firing == set(), "alerts never seen firing"
    assert alerts - silent == set(), "alerts never seen staying silent"


def test_every_dashboard_query_parses(tmp_path):
    """promtool parses each query as the expression of a recording rule."""
    assert {p.stem for p in DASHBOARDS} >= {"fleet", "bridge", "rollouts", "broker"}
    exprs = dashboard_expressions()
    rules = [
        {"record": f"outpost:dashboard_query_{i}", "expr": plain(e)} for i, e in enumerate(exprs)
    ]
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = _promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout
