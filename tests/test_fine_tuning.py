"""A fine-tuned embedder ships as a delta in the bundle; the client fetches and applies it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
from safetensors import safe_open

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from fhe.build.finetune import DELTA_FILE
from fhe.build.recipe import TrainedBundle
from fhe.contract.digest import bytes_sha256, file_sha256
from fhe.embedding.torch_embedder import TextEmbedder
from server.models.registry import ModelRegistry
from tests.conftest import SAMPLE_TEXTS
from tests.support.server_process import ServerProcess


def test_bundle_holds_only_encoder_tensors_in_float16(tiny_bundle: TrainedBundle) -> None:
    info = tiny_bundle.metadata.embedding
    delta = tiny_bundle.path / DELTA_FILE
    assert info.delta_file == DELTA_FILE and info.delta_sha256 == file_sha256(delta)
    assert info.delta_bytes == delta.stat().st_size
    with safe_open(str(delta), framework="pt") as tensors:
        names = list(tensors.keys())
        assert names and all(name.startswith("encoder.layer.") for name in names)
        assert {str(tensors.get_tensor(name).dtype) for name in names} == {"torch.float16"}
    assert "fine-tuned on the training split" in (tiny_bundle.path / "README.md").read_text()


def test_client_embeds_with_the_bundles_delta(
    tiny_bundle: TrainedBundle, tiny_server: ServerProcess, tmp_path: Path
) -> None:
    with FHEServerAPI(tiny_server.url) as api:
        remote = EncryptedModel(api, "tiny", tmp_path / "cache", embedder_cache=tmp_path / "e")
        client_vectors = remote.embedder.embed(SAMPLE_TEXTS)
    onnx = tiny_bundle.metadata.embedding.onnx
    assert onnx is not None  # the recipe ships the tuned weights as ONNX: the client needs no torch
    assert file_sha256(tmp_path / "e" / f"{onnx.sha256}.onnx") == onnx.sha256
    assert not list((tmp_path / "e").glob("*.safetensors"))
    np.testing.assert_allclose(client_vectors, tiny_bundle.embedder.embed(SAMPLE_TEXTS), atol=1e-5)
    base = TextEmbedder().embed(SAMPLE_TEXTS)
    assert np.abs(client_vectors - base).max() > 1e-2


def test_delta_is_served_and_checked(
    tiny_bundle: TrainedBundle, tiny_server: ServerProcess, tmp_path: Path
) -> None:
    answer = httpx.get(f"{tiny_server.url}/v1/models/tiny/embedder-delta")
    assert answer.status_code == 200
    assert bytes_sha256(answer.content) == tiny_bundle.metadata.embedding.delta_sha256

    models = tmp_path / "models"
    shutil.copytree(tiny_bundle.path, models / "tiny")
    shutil.copytree(tiny_bundle.path, models / "plain")
    meta = json.loads((models / "plain" / "model.json").read_text())
    meta["name"] = "plain"
    meta["input"]["embedding"].update(delta_file=None, delta_sha256=None, delta_bytes=None)
    (models / "plain" / "model.json").write_text(json.dumps(meta))
    with (models / "tiny" / DELTA_FILE).open("ab") as handle:
        handle.write(b"\0")
    registry = {model.name: model for model in ModelRegistry.scan(models).all()}
    assert "does not match the sha256" in registry["tiny"].reason
    server = ServerProcess(models, tmp_path / "data").start()
    try:
        missing = httpx.get(f"{server.url}/v1/models/plain/embedder-delta")
        assert missing.status_code == 404 and missing.json()["code"] == "no_embedder_delta"
    finally:
        server.stop()
