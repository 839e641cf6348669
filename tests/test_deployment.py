"""deployment/: the compose file and Kubernetes manifests pass their validators, and the image's
commands exist. No Docker engine runs here, so the image itself is not built (see the README)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

BIN = Path(sys.executable).parent
DEPLOYMENT = REPO / "deployment"
MANIFESTS = sorted((DEPLOYMENT / "kubernetes").glob("*.yaml"))


def test_kubernetes_manifests_pass_strict_schema_validation() -> None:
    manifests = [m for m in MANIFESTS if m.name != "kustomization.yaml"]
    command = [str(BIN / "kubernetes-validate"), "--strict", *map(str, manifests)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    kinds = {doc["kind"] for m in manifests for doc in yaml.safe_load_all(m.read_text()) if doc}
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret"}
    assert expected <= kinds


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((DEPLOYMENT / "kubernetes" / "kustomization.yaml").read_text())
    assert sorted(listed["resources"]) == sorted(
        m.name for m in MANIFESTS if m.name != "kustomization.yaml"
    )


def test_every_container_has_probes_and_resources() -> None:
    for manifest in MANIFESTS:
        for doc in yaml.safe_load_all(manifest.read_text()):
            if not doc or doc["kind"] != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                where = f"{manifest.name}: {container['name']}"
                assert "readinessProbe" in container and "livenessProbe" in container, where
                assert {"requests", "limits"} <= set(container["resources"]), where


def test_compose_file_passes_docker_compose_config() -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: apt-get install docker-compose (make test does)"
    run = subprocess.run(
        [binary, "-f", str(DEPLOYMENT / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"FHE_API_TOKEN": "validation-only", "PATH": "/usr/bin:/bin"},
        cwd=DEPLOYMENT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    services = yaml.safe_load((DEPLOYMENT / "compose.yaml").read_text())["services"]
    assert {"api", "worker", "redis", "demo"} <= set(services)


def test_dockerfile_runs_as_non_root_with_a_health_check_and_existing_sources() -> None:
    text = (DEPLOYMENT / "Dockerfile").read_text()
    assert re.search(r"^USER fhe$", text, re.M) and "HEALTHCHECK" in text
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim", text, re.M)
    for source in re.findall(r"^COPY (?:--chown=\S+ )?([^-\s][^\n]*?) \S+$", text, re.M):
        for part in source.split():
            assert (REPO / part).exists(), f"COPY source {part} is missing"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".cache" in ignored


def test_the_commands_the_deployment_runs_exist() -> None:
    def help_of(*command: str) -> str:
        run = subprocess.run(
            [*command, "--help"], capture_output=True, text=True, timeout=120, check=False
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    serve = help_of(str(BIN / "fhe-server"), "serve")
    assert "--backend" in serve and "--redis" in serve and "--dev" in serve
    assert "--redis" in help_of(str(BIN / "fhe-server"), "worker")
    demo = help_of(str(BIN / "fhe-client"), "demo")
    assert "--server" in demo and "--host" in demo and "--port" in demo
