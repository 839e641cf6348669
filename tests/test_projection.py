"""A text bundle whose client reduces the embedding (PCA) before encrypting: trained by the real
recipe, served by a real fhe-server, predicted through the real client; and hostile projection
files refused."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.settings import ClientSettings
from fhe.build.recipe import RecipeConfig, TrainedBundle, train
from fhe.contract.projection import PROJECTION_FILE, Projection, UnusableProjection
from server.models.registry import load_fhe_model
from tests.conftest import REPO, SAMPLE_TEXTS, clear_labels, run_client
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def projected(tmp_path_factory: pytest.TempPathFactory) -> TrainedBundle:
    """A logistic regression over 8 principal components of the (frozen) embedding."""
    config = RecipeConfig(
        out=tmp_path_factory.mktemp("projected") / "projected",
        name="projected",
        model_type="linear",
        n_bits=[6],
        reduce_to=8,
        fine_tune_epochs=0,
        cv_folds=0,
        fhe_sample=2,
        max_train_rows=400,
        cache_dir=REPO / ".cache",
    )
    return train(config)


@pytest.fixture(scope="module")
def server(
    projected: TrainedBundle, tiny_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("projected-models")
    shutil.copytree(projected.path, root / "projected")
    shutil.copytree(tiny_bundle.path, root / "tiny")
    process = ServerProcess(root, tmp_path_factory.mktemp("projected-server") / "data").start()
    yield process
    process.stop()


@pytest.mark.fhe
def test_the_circuit_takes_the_projection_and_the_card_says_so(projected: TrainedBundle) -> None:
    info = projected.metadata.input.embedding.projection
    assert info is not None and info.width == 8 and 0 < info.explained_variance < 1
    assert projected.metadata.input.embedding.dimension == 384
    with zipfile.ZipFile(projected.path / "client.zip") as archive:
        specs = json.loads(archive.read("client.specs.json"))
    gate = specs["circuits"][0]["inputs"][0]["typeInfo"]["lweCiphertext"]
    assert gate["abstractShape"]["dimensions"] == [1, 8]
    card = (projected.path / "README.md").read_text()
    assert "8 leading principal components" in card and info.sha256 in card


def test_encrypted_labels_equal_the_clear_model_on_projected_embeddings(
    projected: TrainedBundle, server: ServerProcess, client_env: dict[str, str], tmp_path: Path
) -> None:
    texts = SAMPLE_TEXTS[:3]
    result = run_client(
        ["predict", "-m", "projected", "--server", server.url, "--json", *texts], client_env
    )
    assert result.returncode == 0, result.stderr
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert labels == clear_labels(projected, texts)
    settings = ClientSettings(server_url=server.url, cache_dir=tmp_path / "api")
    with FHEServerAPI(settings=settings) as api:
        remote = EncryptedModel(api, "projected", tmp_path / "api", embedder_cache=tmp_path / "e")
        client_features = remote.embed(texts)
    assert client_features.shape == (3, 8)
    np.testing.assert_allclose(client_features, projected.features(texts), atol=1e-4)


def test_the_server_hands_out_the_projection_with_its_hash(
    projected: TrainedBundle, server: ServerProcess
) -> None:
    served = httpx.get(f"{server.url}/v1/models/projected/projection")
    assert served.status_code == 200
    info = projected.metadata.input.embedding.projection
    assert served.headers["x-content-sha256"] == info.sha256
    assert served.content == (projected.path / PROJECTION_FILE).read_bytes()
    refused = httpx.get(f"{server.url}/v1/models/tiny/projection")
    assert refused.status_code == 404 and refused.json()["code"] == "no_projection"


@pytest.mark.fhe
def test_a_bundle_whose_projection_changed_does_not_load(
    projected: TrainedBundle, tmp_path: Path
) -> None:
    copy = tmp_path / "projected"
    shutil.copytree(projected.path, copy)
    model = load_fhe_model(copy)
    assert model.ready, model.reason
    Projection(
        mean=np.zeros(384, np.float32),
        components=np.eye(8, 384, dtype=np.float32),
        explained_variance=0.5,
    ).save(copy / PROJECTION_FILE)
    assert "does not match the sha256" in (load_fhe_model(copy).reason or "")
    (copy / PROJECTION_FILE).unlink()
    assert "is missing" in (load_fhe_model(copy).reason or "")


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        ({"mean": np.zeros(384, np.float32)}, "holds"),
        (
            {
                "mean": np.zeros(384, np.float32),
                "components": np.array([object()], dtype=object),
                "explained_variance": np.float32(1),
            },
            "not a projection",
        ),
        (
            {
                "mean": np.zeros(384),
                "components": np.eye(8, 384),
                "explained_variance": np.float32(1),
            },
            "float32",
        ),
        (
            {
                "mean": np.zeros(384, np.float32),
                "components": np.eye(8, 384, dtype=np.float32),
                "explained_variance": np.zeros(2, np.float32),
            },
            "float32",
        ),
        (
            {
                "mean": np.zeros(100, np.float32),
                "components": np.eye(8, 100, dtype=np.float32),
                "explained_variance": np.float32(1),
            },
            "384-wide",
        ),
        (
            {
                "mean": np.full(384, np.nan, np.float32),
                "components": np.eye(8, 384, dtype=np.float32),
                "explained_variance": np.float32(1),
            },
            "NaN",
        ),
    ],
)
@pytest.mark.fast
def test_hostile_projection_files_are_refused(
    arrays: dict[str, np.ndarray], reason: str, tmp_path: Path
) -> None:
    path = tmp_path / "p.npz"
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(UnusableProjection, match=reason):
        Projection.load(path, 384)
    for junk in (b"not a zip at all", b"PK\x03\x04 truncated"):
        path.write_bytes(junk)
        with pytest.raises(UnusableProjection, match="not a projection"):
            Projection.load(path, 384)
    np.save(tmp_path / "plain.npy", np.zeros((8, 384), np.float32))
    with pytest.raises(UnusableProjection, match="not a projection"):
        Projection.load(tmp_path / "plain.npy", 384)


@pytest.mark.fast
def test_a_projection_too_big_to_unpack_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    with path.open("wb") as handle:
        np.savez_compressed(
            handle,
            mean=np.zeros(384, np.float32),
            components=np.zeros((4000, 384), np.float32),
            explained_variance=np.float32(1),
        )
    assert path.stat().st_size < 100_000
    with pytest.raises(UnusableProjection, match="too many"):
        Projection.load(path, 384)


@pytest.mark.fhe
def test_a_projection_of_another_width_than_the_circuit_does_not_load(
    projected: TrainedBundle, tmp_path: Path
) -> None:
    copy = tmp_path / "projected"
    shutil.copytree(projected.path, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["input"]["embedding"]["projection"]["width"] = 7
    (copy / "model.json").write_text(json.dumps(meta))
    assert "the circuit takes 8" in (load_fhe_model(copy).reason or "")
