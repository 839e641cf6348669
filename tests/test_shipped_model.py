"""The shipped sentiment bundles, served as the README's main command serves them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhe.bundle import client_spec_hash, read_metadata
from fhe.card import render_card
from fhe.digest import file_sha256
from server.settings import SHIPPED_MODELS_DIR
from tests.conftest import run_client
from tests.server_process import ServerProcess

SHIPPED = ["sentiment", "sentiment-linear"]


@pytest.mark.parametrize("name", SHIPPED)
def test_card_is_rendered_from_model_json(name: str) -> None:
    bundle = SHIPPED_MODELS_DIR / name
    meta = read_metadata(bundle)
    assert meta.name == name
    assert (bundle / "README.md").read_text() == render_card(meta)
    assert meta.client_spec_sha256 == client_spec_hash(bundle)
    assert meta.metrics.fhe_sample_agreement_with_simulation == 1.0
    assert meta.training.command.startswith("python -m fhe.recipe")


@pytest.mark.parametrize("name", SHIPPED)
def test_card_meets_the_accuracy_goal_under_real_fhe(name: str) -> None:
    bundle = SHIPPED_MODELS_DIR / name
    meta = read_metadata(bundle)
    assert meta.metrics.simulated_accuracy >= 0.85
    assert meta.metrics.fhe_sample_size >= 200
    assert meta.metrics.fhe_sample_agreement_with_simulation == 1.0
    assert meta.embedding.delta_sha256 == file_sha256(bundle / meta.embedding.delta_file)


def test_default_is_the_xgboost_circuit_and_the_alternative_has_no_bootstrap() -> None:
    default = read_metadata(SHIPPED_MODELS_DIR / "sentiment").circuit
    alternative = read_metadata(SHIPPED_MODELS_DIR / "sentiment-linear").circuit
    assert default.model_type == "XGBClassifier" and default.pbs_count > 0
    assert alternative.model_type == "LogisticRegression" and alternative.pbs_count == 0


@pytest.mark.parametrize("name", SHIPPED)
def test_readme_example_sentences(name: str, shipped_server: ServerProcess, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "FHE_CLIENT_CACHE": str(tmp_path / "cache")}
    url = ["--server", shipped_server.url]
    keygen = run_client(["keygen", "--model", name, *url], env)
    assert keygen.returncode == 0, keygen.stderr
    texts = {
        "I love this airline, the crew was wonderful": "positive",
        "worst flight ever, they lost my bag and nobody helped": "negative",
    }
    result = run_client(["predict", "--model", name, "--json", *url, *texts], env)
    assert result.returncode == 0, result.stderr
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert labels == list(texts.values())
