"""The shipped sentiment bundles, served as the README's main command serves them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhe.build.card import render_card
from fhe.contract.bundle import client_spec_hash, read_metadata
from fhe.contract.digest import bytes_sha256, file_sha256
from server.settings import SHIPPED_MODELS_DIR
from tests.conftest import run_client
from tests.support.server_process import ServerProcess

SHIPPED = ["sentiment", "sentiment-linear"]


@pytest.mark.fast
@pytest.mark.parametrize("name", SHIPPED)
def test_card_is_rendered_from_model_json(name: str) -> None:
    bundle = SHIPPED_MODELS_DIR / name
    meta = read_metadata(bundle)
    assert meta.name == name
    assert (bundle / "README.md").read_text() == render_card(meta)
    assert meta.client_spec_sha256 == client_spec_hash(bundle)
    assert meta.metrics.fhe_sample_agreement_with_simulation == 1.0
    assert meta.training.command.startswith("python -m fhe.build.recipe")


@pytest.mark.fast
@pytest.mark.parametrize("name", SHIPPED)
def test_card_meets_the_accuracy_goal_under_real_fhe(name: str) -> None:
    bundle = SHIPPED_MODELS_DIR / name
    meta = read_metadata(bundle)
    assert meta.metrics.simulated_accuracy >= 0.85
    assert meta.metrics.fhe_sample_size >= 200
    assert meta.metrics.fhe_sample_agreement_with_simulation == 1.0
    assert meta.embedding.delta_sha256 == file_sha256(bundle / meta.embedding.delta_file)


@pytest.mark.fast
@pytest.mark.parametrize("name", SHIPPED)
def test_the_embedder_ships_as_onnx_checked_against_torch(name: str) -> None:
    onnx = read_metadata(SHIPPED_MODELS_DIR / name).embedding.onnx
    bundle = SHIPPED_MODELS_DIR / name
    assert onnx is not None and onnx.precision == "float32"
    assert file_sha256(bundle / onnx.file) == onnx.sha256
    assert file_sha256(bundle / onnx.tokenizer_file) == onnx.tokenizer_sha256
    assert onnx.max_difference <= onnx.tolerance <= 1e-4
    assert (bundle / onnx.file).stat().st_size == onnx.bytes < 100 * 1024 * 1024


def test_the_server_hands_out_the_client_files_with_their_hashes(
    shipped_server: ServerProcess,
) -> None:
    import httpx

    text = read_metadata(SHIPPED_MODELS_DIR / "sentiment").embedding.onnx
    table = read_metadata(SHIPPED_MODELS_DIR / "breast-cancer").input.preprocessing
    expected = {
        "sentiment/embedder-onnx": text.sha256,
        "sentiment/tokenizer": text.tokenizer_sha256,
        "breast-cancer/preprocessing.json": table.plain_sha256,
    }
    for path, sha256 in expected.items():
        answer = httpx.get(f"{shipped_server.url}/v1/models/{path}", timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Content-SHA256"] == sha256
        assert bytes_sha256(answer.content) == sha256
    missing = httpx.get(f"{shipped_server.url}/v1/models/breast-cancer/embedder-onnx", timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == "no_embedder_export"


@pytest.mark.fast
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


TABULAR = {"breast-cancer": "tabular-classification", "diabetes": "tabular-regression"}


@pytest.mark.fast
@pytest.mark.parametrize("name", TABULAR)
def test_tabular_card_is_rendered_from_model_json(name: str) -> None:
    from fhe.build.tabular_card import render_tabular_card
    from fhe.contract.bundle import TabularMetrics

    bundle = SHIPPED_MODELS_DIR / name
    meta = read_metadata(bundle)
    assert meta.task == TABULAR[name] and meta.input.kind == "tabular"
    assert (bundle / "README.md").read_text() == render_tabular_card(meta)
    assert meta.client_spec_sha256 == client_spec_hash(bundle)
    assert meta.training.command.startswith("python -m fhe.build.tabular_recipe")
    assert isinstance(meta.metrics, TabularMetrics)
    assert meta.metrics.fhe_sample_size == meta.metrics.rows == meta.training.test_rows
    assert meta.metrics.fhe_sample_agreement_with_simulation == 1.0
    assert meta.clear_twin == f"{name}-clear"
    twin = json.loads((SHIPPED_MODELS_DIR / meta.clear_twin / "config.json").read_text())
    assert twin["sklearn"]["columns"] == meta.input.names


def test_tabular_examples_and_their_clear_twins_agree(
    shipped_server: ServerProcess, tmp_path: Path
) -> None:
    """The README's tabular example: the encrypted label equals the clear twin's, and the
    encrypted regression value is within the card's quantization error of the twin's."""
    import os

    import httpx

    env = {**os.environ, "FHE_CLIENT_CACHE": str(tmp_path / "cache")}
    for name in TABULAR:
        meta = read_metadata(SHIPPED_MODELS_DIR / name)
        row = meta.input.example
        result = run_client(
            ["predict", "-m", name, "--server", shipped_server.url, "--row", json.dumps(row),
             "--json"],
            env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        encrypted = json.loads(result.stdout)
        clear = httpx.post(
            f"{shipped_server.url}/models/{name}-clear",
            json={"inputs": {"data": {key: [value] for key, value in row.items()}}},
            timeout=30,
        )
        assert clear.status_code == 200, clear.text
        if meta.task == "tabular-classification":
            assert encrypted["label"] == clear.json()[0]
        else:
            error = meta.metrics.max_quantization_error
            assert abs(encrypted["value"] - clear.json()[0]) <= error + 1e-6
