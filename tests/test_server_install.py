"""The lean server: `make server-install` into a fresh venv (no torch, transformers, xgboost,
Concrete-ML or CUDA libraries, under 1,000 MB), serving text, tabular, raw and clear models from
that venv as a full install's server does."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from tests.conftest import REPO, SAMPLE_TEXTS
from tests.support.server_process import ServerProcess
from tests.test_lean_server import _raw_bundle

MAX_MB = 1000
FORBIDDEN = ("torch", "transformers", "xgboost", "gradio", "concrete-ml", "sentence-transformers")


@pytest.fixture(scope="module")
def server_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv made by `make server-install VENV=...`, the command the README gives."""
    venv = tmp_path_factory.mktemp("lean") / "venv"
    run = subprocess.run(
        ["make", "-C", str(REPO), "server-install", f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "server install: " in run.stdout
    return venv


def test_server_install_is_small_and_holds_no_ml_stack(server_venv: Path) -> None:
    size = int(
        subprocess.run(
            ["du", "-sm", str(server_venv)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    print(f"server install: {size} MB")
    assert size <= MAX_MB
    site = next((server_venv / "lib").glob("python3*/site-packages"))
    assert not list(site.glob("nvidia*")) and not (site / "torch").exists()
    assert not (site / "concrete" / "ml").exists()
    listed = subprocess.run(
        [str(server_venv / "bin" / "pip"), "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert not names & set(FORBIDDEN), names & set(FORBIDDEN)
    assert {"concrete-python", "fastapi", "celery", "scikit-learn", "fhe-inference"} <= names


@dataclass
class LeanServer(ServerProcess):
    """`fhe-server serve` from the lean venv's own console script."""

    venv: Path | None = None

    def command(self) -> list[str]:
        assert self.venv is not None
        full = super().command()
        return [str(self.venv / "bin" / "fhe-server"), *full[full.index("serve") :]]


@pytest.mark.fhe
def test_the_lean_server_serves_every_kind_as_the_full_one(
    server_venv: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("sentiment-linear", "breast-cancer", "diabetes-clear"):
        shutil.copytree(REPO / "models" / name, models / name)
    _raw_bundle(models)
    row = {"age": 0.03, "sex": 0.05, "bmi": 0.06, "bp": 0.02}
    row |= {f"s{i}": 0.0 for i in range(1, 7)}
    answers = []
    for server in (
        LeanServer(models, tmp_path / "lean-data", venv=server_venv),
        ServerProcess(models, tmp_path / "full-data"),
    ):
        server.start()
        try:
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            with FHEServerAPI(server.url) as api:
                text = EncryptedModel(api, "sentiment-linear", tmp_path / "client")
                tabular = EncryptedModel(api, "breast-cancer", tmp_path / "client")
                bare = EncryptedModel(api, "raw", tmp_path / "client")
                clear = httpx.post(
                    f"{server.url}/v1/models/diabetes-clear/predict",
                    json={"inputs": {"data": {k: [v] for k, v in row.items()}}},
                )
                assert clear.status_code == 200, clear.text
                answers.append(
                    {
                        "text": [p.scores for p in text.predict(SAMPLE_TEXTS[:3])],
                        "tabular": tabular.predict([tabular.metadata.input.example])[0].scores,
                        "raw": bare.predict([[0.01 * i for i in range(10)]])[0].output,
                        "clear": clear.json()["output"],
                    }
                )
        finally:
            server.stop()
    lean, full = answers
    assert lean == full
