"""Production manifests: kustomize renders and every object validates; the compose file
validates against the Compose specification; every OUTPOST_* variable they set exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cli.settings import variables

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose"
OPERATORS = {  # custom resources: their schemas live with the operators
    "EMQX": "apps.emqx.io/v2beta1",
    "MongoDBCommunity": "mongodbcommunity.mongodb.com/v1",
}
K8S_VERSION = "1.32.0"


def kustomize(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` (or the standalone ``kustomize build``)."""
    if shutil.which("kubectl"):
        argv = ["kubectl", "kustomize", str(path)]
    else:
        found = shutil.which("kustomize") or str(Path.home() / "go" / "bin" / "kustomize")
        argv = [found, "build", str(path)]
    rendered = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return kustomize(K8S / "overlays" / "production")


def test_every_rendered_object_validates(rendered):
    for doc in rendered:
        if doc["kind"] in OPERATORS:
            assert doc["apiVersion"] == OPERATORS[doc["kind"]]
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered)
    for service in ("bridge", "scheduler", "api"):
        assert ("Deployment", f"outpost-{service}") in kinds
        assert ("PodDisruptionBudget", f"outpost-{service}") in kinds
    for service in ("bridge", "api"):
        assert ("HorizontalPodAutoscaler", f"outpost-{service}") in kinds
    assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {
        "outpost"
    }


def test_deployments_have_probes_and_resources(rendered):
    for doc in rendered:
        if doc["kind"] != "Deployment":
            continue
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"requests", "limits"} <= set(container["resources"])


def test_the_validator_rejects_a_misspelt_field(rendered):
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_compose_validates_against_the_compose_specification():
    tool = Path(sys.executable).with_name("check-jsonschema")
    checked = subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(COMPOSE / "compose.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _set_in_compose() -> set[str]:
    compose = yaml.safe_load((COMPOSE / "compose.yml").read_text())
    names: set[str] = set()
    for service in compose["services"].values():
        names |= set(service.get("environment") or {})
    names |= set(compose["x-outpost"]["environment"])
    return names


def _set_in_k8s(rendered: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for doc in rendered:
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                names |= {e["name"] for e in container.get("env", [])}
    return names


def _in_env_files() -> set[str]:
    names: set[str] = set()
    for path in [COMPOSE / "env.example", K8S / "base" / "secrets.example.env"]:
        for line in path.read_text().splitlines():
            if re.match(r"^[A-Z_][A-Z0-9_]*=", line):
                names.add(line.split("=", 1)[0])
    return names


def test_every_outpost_variable_the_manifests_set_exists_in_the_settings(rendered):
    set_here = _set_in_compose() | _set_in_k8s(rendered) | _in_env_files()
    ours = {name for name in set_here if name.startswith("OUTPOST_")}
    assert len(ours) > 10
    assert ours - variables() == set(), "set by a manifest, read by no settings group"
