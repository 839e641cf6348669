"""The shipped sentiment bundle, served as the README's main command serves it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhe.bundle import client_spec_hash, read_metadata
from fhe.card import render_card
from server.settings import SHIPPED_MODELS_DIR
from tests.conftest import run_client
from tests.server_process import ServerProcess

SENTIMENT = SHIPPED_MODELS_DIR / "sentiment"


def test_card_is_rendered_from_model_json() -> None:
    meta = read_metadata(SENTIMENT)
    assert (SENTIMENT / "README.md").read_text() == render_card(meta)
    assert meta.client_spec_sha256 == client_spec_hash(SENTIMENT)
    assert meta.metrics.fhe_sample_agreement_with_simulation == 1.0
    assert meta.training.command.startswith("python -m fhe.recipe")


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory: pytest.TempPathFactory):
    server = ServerProcess(SHIPPED_MODELS_DIR, tmp_path_factory.mktemp("shipped") / "data").start()
    yield server
    server.stop()


def test_readme_example_sentences(shipped_server: ServerProcess, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "FHE_CLIENT_CACHE": str(tmp_path / "cache")}
    url = ["--server", shipped_server.url]
    keygen = run_client(["keygen", "--model", "sentiment", *url], env)
    assert keygen.returncode == 0, keygen.stderr
    texts = {
        "I love this airline, the crew was wonderful": "positive",
        "worst flight ever, they lost my bag and nobody helped": "negative",
    }
    result = run_client(["predict", "--model", "sentiment", "--json", *url, *texts], env)
    assert result.returncode == 0, result.stderr
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert labels == list(texts.values())
