"""deployment/compose.yaml started for real with podman-compose (or docker compose), for the image
tests: the stack's services, its containers, their logs, and killing one of them.

Third-party images are the official ones where they can be pulled; elsewhere stand-ins are built
from the local Debian base with Debian's packages (deployment/standins/Dockerfile).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = REPO / "deployment"
CONTAINERS_CONF = DEPLOYMENT / "containers.conf"
BASE_IMAGE = "localhost/fhe-base:bookworm"

THIRD_PARTY = {
    "POSTGRES_IMAGE": ("docker.io/library/postgres:16-alpine", "postgres"),
    "REDIS_IMAGE": ("docker.io/library/redis:7.4-alpine", "redis"),
    "NGINX_IMAGE": ("docker.io/library/nginx:1.28-alpine", "nginx"),
    "PROMETHEUS_IMAGE": ("docker.io/prom/prometheus:v3.5.0", "prometheus"),
}
"""Each compose variable: its official image, and the stand-in target that replaces it."""


def engine() -> str:
    """podman where installed (rootful here), else docker."""
    found = shutil.which("podman") or shutil.which("docker")
    if not found:
        raise RuntimeError("neither podman nor docker is installed (make images installs podman)")
    return found


def engine_env() -> dict[str, str]:
    """The environment for the engine: this VM's podman settings from the project's file."""
    env = dict(os.environ)
    if "podman" in engine() and CONTAINERS_CONF.is_file():
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def run(
    command: list[str], timeout: float = 1800, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command with the engine's environment; its output captured."""
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=engine_env(), check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{command} failed ({done.returncode}): {done.stdout[-2000:]}"
                           f"{done.stderr[-3000:]}")  # fmt: skip
    return done


def image_exists(name: str) -> bool:
    return run([engine(), "image", "exists", name], check=False).returncode == 0


def image_mb(name: str) -> float:
    """An image's size in MB (10^6 bytes, as the engines print)."""
    size = run([engine(), "image", "inspect", "--format", "{{.Size}}", name]).stdout.strip()
    return int(size) / 1e6


def third_party_images(pull_timeout: float = 120) -> dict[str, str]:
    """The compose variables of third-party images: the official image where it can be pulled,
    else a stand-in built from the local base; prints which."""
    chosen = {}
    for variable, (official, target) in THIRD_PARTY.items():
        if image_exists(official) or (
            run([engine(), "pull", "-q", official], timeout=pull_timeout, check=False).returncode
            == 0
        ):
            chosen[variable] = official
            continue
        standin = f"localhost/fhe-standin-{target}:latest"
        if not image_exists(standin):
            run(
                [engine(), "build", "--format", "docker", "--build-arg",
                 f"BASE_IMAGE={BASE_IMAGE}", "--target", target, "-t", standin,
                 "-f", str(DEPLOYMENT / "standins" / "Dockerfile"), str(DEPLOYMENT / "standins")],
            )  # fmt: skip
        chosen[variable] = standin
        print(f"{official} cannot be pulled here: using {standin}", file=sys.stderr)
    return chosen


def compose_command() -> list[str]:
    """podman-compose (from this virtualenv, >= 1.6) with podman, `docker compose` with docker."""
    if "podman" in engine():
        local = Path(sys.executable).with_name("podman-compose")
        return [str(local) if local.exists() else "podman-compose"]
    return [engine(), "compose"]


@dataclass
class ComposeStack:
    """One project of deployment/compose.yaml with the given variables."""

    project: str
    env: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> str:
        command = [*compose_command(), "-p", self.project, "-f", str(DEPLOYMENT / "compose.yaml")]
        done = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**engine_env(), **self.env},
            cwd=DEPLOYMENT,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"compose {args} failed: {done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done.stdout + done.stderr

    def up(self) -> float:
        """Start every service detached; returns the seconds it took."""
        started = time.monotonic()
        self.compose("up", "-d")
        return time.monotonic() - started

    def down(self) -> None:
        """Stop and remove the containers, networks and volumes it started."""
        self.compose("down", "-v", "-t", "10", check=False)

    def containers(self, service: str) -> list[str]:
        """The names of the service's containers, running or not."""
        listed = run(
            [engine(), "ps", "-a", "--format", "{{.Names}}",
             "--filter", f"label=com.docker.compose.project={self.project}",
             "--filter", f"label=com.docker.compose.service={service}"],
        )  # fmt: skip
        return sorted(name for name in listed.stdout.split() if name)

    def logs(self, container: str) -> str:
        done = run([engine(), "logs", container], check=False)
        return done.stdout + done.stderr

    def kill(self, container: str) -> None:
        """SIGKILL the container's processes (not a graceful stop)."""
        run([engine(), "kill", container])

    def start(self, container: str) -> None:
        """Start a stopped container again (podman applies no restart policy after a kill)."""
        run([engine(), "start", container])
