"""Bundles that cannot load are listed as unloadable with the reason; the others still serve."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import httpx

from fhe.build.recipe import TrainedBundle
from server.models.registry import ModelRegistry
from tests.support.server_process import ServerProcess


def rewrite_zip_member(path: Path, member: str, transform) -> None:
    """Rewrite one member of a zip archive in place."""
    with zipfile.ZipFile(path) as source:
        items = [(info, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for info, data in items:
            target.writestr(info, transform(data) if info.filename == member else data)


def make_models(root: Path, bundle: TrainedBundle) -> Path:
    shutil.copytree(bundle.path, root / "good")
    old = root / "old-concrete"
    shutil.copytree(bundle.path, old)

    def older(data: bytes) -> bytes:
        versions = json.loads(data)
        versions["concrete-ml"] = "1.0.0"
        return json.dumps(versions).encode()

    rewrite_zip_member(old / "server.zip", "versions.json", older)
    meta = json.loads((old / "model.json").read_text())
    meta["name"] = "old-concrete"
    (old / "model.json").write_text(json.dumps(meta))

    tampered = root / "tampered"
    shutil.copytree(bundle.path, tampered)
    meta["name"] = "tampered"
    (tampered / "model.json").write_text(json.dumps(meta))
    with (tampered / "client.zip").open("ab") as handle:
        handle.write(b"\0")

    broken = root / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    return root


def test_unloadable_bundles_are_listed_with_reasons(
    tmp_path: Path, tiny_bundle: TrainedBundle
) -> None:
    models = make_models(tmp_path / "models", tiny_bundle)
    registry = {model.name: model for model in ModelRegistry.scan(models).all()}
    assert registry["tiny"].ready
    assert "concrete-ml: 1.0.0 != 1.9.0" in registry["old-concrete"].reason
    assert "client.zip has sha256" in registry["tampered"].reason
    assert "model.json unreadable" in registry["broken"].reason

    server = ServerProcess(models, tmp_path / "data").start()
    try:
        listing = {
            row["name"]: row for row in httpx.get(f"{server.url}/v1/models").json()["models"]
        }
        assert listing["tiny"]["status"] == "ready"
        assert listing["old-concrete"]["status"] == "unloadable"
        assert "Version mismatch" in listing["old-concrete"]["reason"]
        answer = httpx.post(
            f"{server.url}/v1/models/old-concrete/predict",
            content=b"x",
            headers={"X-Key-Id": "0" * 64, "X-Client-Spec": "0" * 64},
        )
        assert answer.status_code == 400
        assert "cannot load" in answer.json()["error"]
        assert httpx.get(f"{server.url}/v1/models/old-concrete/client.zip").status_code == 400
    finally:
        server.stop()
