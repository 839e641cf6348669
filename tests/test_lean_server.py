"""The lean server: circuits compiled for the host with `concrete.compiler` alone, cached, tried
before readiness; no torch, `concrete.fhe` or Concrete-ML in any server process.

Real processes throughout: `fhe-server serve` (its pool workers), `fhe-server worker` on a real
redis-server, real keys and ciphertexts, Concrete-ML's own FHEModelServer as the reference.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from fhe.build.recipe import TrainedBundle
from fhe.contract.digest import file_sha256
from fhe.contract.keyset import encrypted_input_dimensions, read_client_specs
from fhe.contract.server_zip import UnsupportedServerZip, read_server_zip
from server.compute.compiled_circuit import (
    READY_MARK,
    CircuitUnavailable,
    CompiledCircuit,
    cache_entry,
    deserialize_keys,
    probe_host,
)
from tests.conftest import REPO, SAMPLE_TEXTS, clear_labels
from tests.support.local_redis import LocalRedis
from tests.support.local_worker import LocalWorker
from tests.support.server_process import ServerProcess

SHIPPED = ("sentiment", "sentiment-linear", "breast-cancer", "diabetes")
"""The shipped FHE bundles; the linear ones' circuits have no bootstrap, so equal bytes out."""
LINEAR = ("sentiment-linear",)
PROBE = Path(__file__).resolve().parent / "support" / "module_probe"
HEAVY = ("torch", "transformers", "xgboost", "concrete.fhe", "concrete.ml")


def _zip_with(source: Path, target: Path, changes: dict[str, bytes | None]) -> Path:
    """A copy of server.zip with members replaced (or removed, for None) or added."""
    with zipfile.ZipFile(source) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    for name, data in changes.items():
        if data is None:
            files.pop(name, None)
        else:
            files[name] = data
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    target.write_bytes(buffer.getvalue())
    return target


def _member(name: str, member: str) -> bytes:
    with zipfile.ZipFile(REPO / "models" / name / "server.zip") as archive:
        return archive.read(member)


@pytest.mark.fast
def test_what_the_loader_does_not_reproduce_is_refused_with_a_reason(tmp_path: Path) -> None:
    source = REPO / "models" / "sentiment-linear" / "server.zip"
    config = json.loads(_member("sentiment-linear", "configuration.json"))
    specs = json.loads(_member("sentiment-linear", "client.specs.json"))
    versions = json.loads(_member("sentiment-linear", "versions.json"))
    two_circuits = {**specs, "circuits": specs["circuits"] * 2}
    cases = {
        "not saved via MLIR": {"circuit.mlir": None},
        "composition rules": {"composition_rules.json": b'[[["a", 0], ["a", 0]]]'},
        "2 circuits": {"client.specs.json": json.dumps(two_circuits).encode()},
        "concrete-ml: 0.1.0 != 1.9.0": {
            "versions.json": json.dumps({**versions, "concrete-ml": "0.1.0"}).encode()
        },
        "concrete-python: 9.9.9": {
            "versions.json": json.dumps({**versions, "concrete-python": "9.9.9"}).encode()
        },
        "unknown configuration fields ['new_knob']": {
            "configuration.json": json.dumps({**config, "new_knob": 1}).encode()
        },
        "GPU": {"configuration.json": json.dumps({**config, "use_gpu": True}).encode()},
        "composable": {"configuration.json": json.dumps({**config, "composable": True}).encode()},
        "simulated": {"is_simulated": b"1"},
        "lacks ['versions.json']": {"versions.json": None},
        "TFHE-rs": {
            "client.specs.json": json.dumps(
                {**specs, "tfhers_specs": {"input_types_per_func": {"f": [{"bits": 8}]}}}
            ).encode()
        },
        "parameter_selection_strategy='best'": {
            "configuration.json": json.dumps(
                {**config, "parameter_selection_strategy": "best"}
            ).encode()
        },
    }
    for expected, changes in cases.items():
        changed = _zip_with(source, tmp_path / "server.zip", changes)
        with pytest.raises(UnsupportedServerZip, match=expected.replace("[", r"\[")):
            read_server_zip(changed)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(source.read_bytes()[:200])
    with pytest.raises(UnsupportedServerZip, match="unreadable"):
        read_server_zip(truncated)
    for name in SHIPPED:  # what we ship passes, hashed as the file's bytes (read in blocks)
        shipped = REPO / "models" / name / "server.zip"
        read = read_server_zip(shipped)
        assert read.mlir and read.sha256 == file_sha256(shipped)


def test_a_circuit_is_compiled_once_per_host_and_then_loaded_from_the_cache(
    tmp_path: Path,
) -> None:
    server_zip = REPO / "models" / "sentiment-linear" / "server.zip"
    cache = tmp_path / "circuits"
    first = CompiledCircuit(server_zip, cache)
    assert first.compiled
    entry = cache_entry(cache, read_server_zip(server_zip).sha256)
    assert first.entry == entry and (entry / READY_MARK).is_file()
    mark = json.loads((entry / READY_MARK).read_text())
    assert mark["server_zip_sha256"] == read_server_zip(server_zip).sha256
    assert not CompiledCircuit(server_zip, cache).compiled
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temporary left behind
    # An entry that was never finished (no mark) is not trusted: compiled again.
    (entry / READY_MARK).unlink()
    shutil.rmtree(entry / "sharedlib.so", ignore_errors=True)
    assert CompiledCircuit(server_zip, cache).compiled
    assert probe_host(tmp_path / "probe") is None
    # A corrupt MLIR fails with the compiler's reason, as a bundle problem.
    broken = _zip_with(server_zip, tmp_path / "broken.zip", {"circuit.mlir": b"func.func @x("})
    with pytest.raises(CircuitUnavailable, match="did not compile"):
        CompiledCircuit(broken, cache)


def _keys_and_ciphertexts(
    name: str, key_dir: Path, rows: int = 3
) -> tuple[Any, bytes, list[bytes]]:
    """Concrete-ML's own client, its evaluation keys and random inputs it encrypted."""
    from concrete.ml.deployment import FHEModelClient

    bundle = REPO / "models" / name
    client = FHEModelClient(str(bundle), str(key_dir))
    client.generate_private_and_evaluation_keys()
    width = encrypted_input_dimensions(read_client_specs(bundle / "client.zip"))[-1]
    generator = np.random.default_rng(7)
    inputs = [generator.normal(size=(1, width)) for _ in range(rows)]
    return (
        client,
        client.get_serialized_evaluation_keys(),
        [client.quantize_encrypt_serialize(x) for x in inputs],
    )


@pytest.mark.fhe
@pytest.mark.parametrize("name", SHIPPED)
def test_outputs_equal_concrete_ml_on_the_same_ciphertexts(name: str, tmp_path: Path) -> None:
    from concrete.ml.deployment import FHEModelServer

    client, keys, ciphertexts = _keys_and_ciphertexts(name, tmp_path / "keys")
    reference = FHEModelServer(str(REPO / "models" / name))
    lean = CompiledCircuit(REPO / "models" / name / "server.zip", tmp_path / "circuits")
    lean_keys = deserialize_keys(keys)
    for ciphertext in ciphertexts:
        expected = reference.run(ciphertext, keys)
        got = lean.run(ciphertext, lean_keys)
        np.testing.assert_array_equal(
            client.deserialize_decrypt(got), client.deserialize_decrypt(expected)
        )
        if name in LINEAR:
            assert got == expected


def _raw_bundle(root: Path) -> Path:
    """A bare FHEModelDev directory (client.zip and server.zip only), served as raw."""
    raw = root / "raw"
    raw.mkdir()
    for file in ("client.zip", "server.zip"):
        shutil.copy(REPO / "models" / "diabetes" / file, raw / file)
    return raw


def _probe_env(probe_dir: Path) -> dict[str, str]:
    probe_dir.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(PROBE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "FHE_MODULE_PROBE_DIR": str(probe_dir)}


def _probed(probe_dir: Path, settle: float = 2.5) -> list[dict]:
    time.sleep(settle)  # each process writes its record every second
    return [json.loads(p.read_text()) for p in sorted(probe_dir.glob("*.json"))]


def _heavy(record: dict) -> list[str]:
    return [m for m in record["modules"] if m.startswith(HEAVY)]


def _predict_each_kind(url: str, client_dir: Path, tiny: TrainedBundle) -> None:
    with FHEServerAPI(url) as api:
        text = EncryptedModel(api, "tiny", client_dir / "tiny")
        labels = [p.label for p in text.predict(SAMPLE_TEXTS[:2])]
        assert labels == clear_labels(tiny, SAMPLE_TEXTS[:2])
        tabular = EncryptedModel(api, "breast-cancer", client_dir / "tabular")
        example = tabular.metadata.input.example
        assert tabular.predict([example])[0].label in tabular.labels
        raw = EncryptedModel(api, "raw", client_dir / "raw")
        [value] = raw.predict([np.zeros(10)])
        assert value.output is not None and np.isfinite(value.output).all()


@pytest.fixture
def kinds_models(tiny_bundle: TrainedBundle, tmp_path: Path) -> Path:
    """A text bundle, a tabular bundle and a bare (raw) directory."""
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(tiny_bundle.path, root / "tiny")
    shutil.copytree(REPO / "models" / "breast-cancer", root / "breast-cancer")
    _raw_bundle(root)
    return root


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path / "redis").start()
    yield server
    server.stop()


def test_no_server_process_imports_torch_or_concrete_ml_after_real_runs(
    kinds_models: Path, tiny_bundle: TrainedBundle, redis_server: LocalRedis, tmp_path: Path
) -> None:
    """The API and its pool workers (embedded), then a Celery worker and its child, each after
    real FHE runs of a text, a tabular and a raw bundle."""
    embedded = tmp_path / "probe-embedded"
    server = ServerProcess(kinds_models, tmp_path / "data", env=_probe_env(embedded)).start()
    try:
        _predict_each_kind(server.url, tmp_path / "client", tiny_bundle)
        records = _probed(embedded)
    finally:
        server.stop()
    runners = [r for r in records if "concrete.compiler" in r["modules"]]
    assert len(records) >= 3, records  # the API, the compiler child, a pool worker at least
    assert runners, "no probed process ran a circuit"
    assert all(not _heavy(r) for r in records), [(r["argv"], _heavy(r)) for r in records]

    celery = tmp_path / "probe-celery"
    env = _probe_env(celery)
    worker = LocalWorker(redis_server.url, kinds_models, tmp_path / "w", "w", env).start()
    api = ServerProcess(
        kinds_models,
        tmp_path / "api",
        env={**env, "FHE_SERVER_BACKEND": "celery", "FHE_SERVER_REDIS_URL": redis_server.url},
    ).start()
    try:
        _predict_each_kind(api.url, tmp_path / "client", tiny_bundle)
        records = _probed(celery)
    finally:
        api.stop()
        worker.stop()
    workers = [r for r in records if "worker" in r["argv"]]
    assert workers and any("concrete.compiler" in r["modules"] for r in workers), records
    assert all(not _heavy(r) for r in records), [(r["argv"], _heavy(r)) for r in records]


def _no_500(log: Path) -> None:
    text = log.read_text(errors="replace")
    assert '" 500' not in text and "Traceback" not in text, text[-3000:]


def _wait_ready(url: str, timeout: float = 60) -> httpx.Response:
    """/readyz once every circuit was tried (it says `compiling` until then)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"{url}/readyz")
        if answer.status_code == 200 or "compiling" not in answer.text:
            return answer
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)


def test_a_host_without_a_linker_is_not_ready_and_says_why(
    mixed_models: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "bin"  # a PATH where `ld` is not found
    empty.mkdir()
    server = ServerProcess(mixed_models, tmp_path / "data", env={"PATH": str(empty)}).start()
    try:
        ready = _wait_ready(server.url)
        assert ready.status_code == 503
        message = ready.json()["error"]
        assert "ld" in message and "binutils" in message and "circuits" in message
        listing = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
        assert listing["tiny"]["status"] == "unloadable"
        assert "ld" in listing["tiny"]["reason"]
        answer = httpx.post(
            f"{server.url}/v1/models/tiny/predict",
            content=b"x",
            headers={"X-Key-Id": "0" * 64, "X-Client-Spec": "0" * 64},
        )
        assert answer.status_code == 503
        assert answer.json()["code"] == "circuit_unavailable"
        clear = httpx.post(
            f"{server.url}/v1/models/iris/predict",
            json={"inputs": {"data": {c: [1.0] for c in _iris_columns(mixed_models)}}},
        )
        assert clear.status_code == 200, clear.text
    finally:
        server.stop()
    _no_500(server.log)


def _iris_columns(models: Path) -> list[str]:
    config = json.loads((models / "iris" / "config.json").read_text())
    return config["sklearn"]["columns"]


def test_a_corrupt_server_zip_makes_only_its_model_unloadable(
    tiny_bundle: TrainedBundle, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(tiny_bundle.path, models / "tiny")
    bad_mlir = models / "bad-mlir"
    shutil.copytree(tiny_bundle.path, bad_mlir)
    meta = json.loads((bad_mlir / "model.json").read_text())
    (bad_mlir / "model.json").write_text(json.dumps({**meta, "name": "bad-mlir"}))
    _zip_with(tiny_bundle.path / "server.zip", bad_mlir / "server.zip", {"circuit.mlir": b"%%"})
    truncated = models / "truncated"
    shutil.copytree(tiny_bundle.path, truncated)
    (truncated / "model.json").write_text(json.dumps({**meta, "name": "truncated"}))
    (truncated / "server.zip").write_bytes((tiny_bundle.path / "server.zip").read_bytes()[:100])

    server = ServerProcess(models, tmp_path / "data").start()
    try:
        assert _wait_ready(server.url).status_code == 200
        listing = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
        assert listing["tiny"]["status"] == "ready"
        assert listing["bad-mlir"]["status"] == "unloadable"
        assert "did not compile" in listing["bad-mlir"]["reason"]
        assert listing["truncated"]["status"] == "unloadable"
        assert "unreadable" in listing["truncated"]["reason"]
        for name in ("bad-mlir", "truncated"):
            answer = httpx.post(
                f"{server.url}/v1/models/{name}/predict",
                content=b"x",
                headers={"X-Key-Id": "0" * 64, "X-Client-Spec": "0" * 64},
            )
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "circuit_unavailable"
        with FHEServerAPI(server.url) as api:
            remote = EncryptedModel(api, "tiny", tmp_path / "client")
            labels = [p.label for p in remote.predict(SAMPLE_TEXTS[:1])]
        assert labels == clear_labels(tiny_bundle, SAMPLE_TEXTS[:1])
    finally:
        server.stop()
    _no_500(server.log)
