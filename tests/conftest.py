"""Shared fixtures: a small FHE bundle trained by the real recipe, and real fhe-server processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from fhe.dataset import DEFAULT_DATA
from fhe.recipe import RecipeConfig, TrainedBundle, train

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ARTIFACTS = REPO / "test-artifacts"

SAMPLE_TEXTS = [
    "I love this airline, the crew was wonderful",
    "worst flight ever, they lost my bag and nobody helped",
    "@united what time does the gate open for flight 123?",
    "thanks for the upgrade, great service today",
    "my flight was cancelled again and I am stuck at the airport",
]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> TrainedBundle:
    """A small circuit (10 trees, depth 1, 3 bits) trained on a slice of the airline tweets."""
    if not DEFAULT_DATA.is_file():
        pytest.fail(f"training data missing: {DEFAULT_DATA} (../shared/data beside the checkout)")
    models = tmp_path_factory.mktemp("models")
    config = RecipeConfig(
        out=models / "tiny",
        name="tiny",
        n_bits=[3],
        max_depth=[1],
        n_estimators=[10],
        max_pbs=1000,
        cv_folds=2,
        fhe_sample=2,
        max_train_rows=800,
        cache_dir=REPO / ".cache",
    )
    return train(config)


@dataclass
class ServerProcess:
    """A real `fhe-server serve` subprocess on a loopback port."""

    models: Path
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> ServerProcess:
        env = {**os.environ, **self.env}
        self.log = self.data_dir.parent / f"server-{self.port}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(BIN / "fhe-server"),
            "serve",
            "--models",
            str(self.models),
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fhe-server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"fhe-server did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture(scope="session")
def tiny_models(tiny_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding only the tiny bundle."""
    root = tmp_path_factory.mktemp("tiny-models")
    shutil.copytree(tiny_bundle.path, root / "tiny")
    return root


@pytest.fixture(scope="session")
def tiny_server(
    tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server over the tiny bundle shared by the tests that do not stop it."""
    server = ServerProcess(tiny_models, tmp_path_factory.mktemp("server") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """Environment for fhe-client subprocesses: a fresh key cache."""
    return {**os.environ, "FHE_CLIENT_CACHE": str(tmp_path / "client-cache")}


def run_client(
    args: list[str], env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `fhe-client ARGS` as a subprocess and return its completed process."""
    return subprocess.run(
        [str(BIN / "fhe-client"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
