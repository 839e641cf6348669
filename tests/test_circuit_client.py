"""The light circuit client against Concrete-ML's own: the same keys, quantized integers and
predictions bit for bit, on the shipped bundles and on small compiled models of each output rule;
real keys, real encryption and real FHE (Concrete-ML's deployment server runs the circuits)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.circuit_client import (
    OUTPUTS,
    CircuitClient,
    ConcreteMLClient,
    open_circuit_client,
)
from client.errors import ClientError
from client.quantizer import UnsupportedProcessing
from tests.conftest import REPO

SHIPPED = ["breast-cancer", "diabetes", "sentiment-linear", "sentiment"]


def _agrees_with_concrete_ml(bundle: Path, key_dir: Path, features: np.ndarray) -> None:
    """Keys, quantization, encryption and decryption of both clients give the same values."""
    from concrete.ml.deployment import FHEModelClient, FHEModelServer

    light = CircuitClient(bundle / "client.zip", key_dir)
    evaluation_keys = light.generate_keys(force=False)
    reference = FHEModelClient(str(bundle), key_dir=str(key_dir))
    assert reference.get_serialized_evaluation_keys() == evaluation_keys
    server = FHEModelServer(str(bundle))
    server.load()
    for row in features:
        row = row[None, :]
        quantized = light.quantize(row)
        expected = np.asarray(reference.model.quantize_input(row))
        assert quantized.dtype == expected.dtype and np.array_equal(quantized, expected)
        ours = server.run(light.encrypt(quantized), evaluation_keys)
        theirs = server.run(reference.quantize_encrypt_serialize(row), evaluation_keys)
        for result in (ours, theirs):
            got = light.decrypt(result)
            want = np.asarray(reference.deserialize_decrypt_dequantize(result))
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.array_equal(got, want), (got, want)


@pytest.mark.fhe
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_bundles_agree_with_concrete_ml(name: str, tmp_path: Path) -> None:
    bundle = REPO / "models" / name
    light = CircuitClient(bundle / "client.zip", tmp_path / "probe")
    width = len(light.inputs) if light.rule.trees else light.input_shape[1]
    rng = np.random.default_rng(7)
    rows = 2 if name == "sentiment" else 4
    features = (rng.normal(size=(rows, width)) * np.arange(1, rows + 1)[:, None]).astype(np.float32)
    _agrees_with_concrete_ml(bundle, tmp_path / "keys", features)


def _compiled_bundle(estimator, x: np.ndarray, y: np.ndarray, path: Path) -> Path:
    """A small Concrete-ML model fitted, compiled and saved as FHEModelDev does."""
    from concrete.ml.deployment import FHEModelDev

    estimator.fit(x, y)
    estimator.compile(x)
    FHEModelDev(str(path), estimator).save()
    return path


@pytest.mark.parametrize(
    "kind",
    ["XGBRegressor", "DecisionTreeClassifier", "RandomForestRegressor", "LinearSVC", "Lasso"],
)
@pytest.mark.fhe
def test_each_output_rule_agrees_with_concrete_ml(kind: str, tmp_path: Path) -> None:
    from concrete.ml import sklearn as cml
    from sklearn.datasets import load_diabetes, load_iris

    regression = kind.endswith("Regressor") or kind == "Lasso"
    x, y = (load_diabetes if regression else load_iris)(return_X_y=True)
    x = x[:, :4].astype(np.float32)
    params = {"n_bits": 3}
    if kind in {"XGBRegressor", "RandomForestRegressor"}:
        params |= {"n_estimators": 3, "max_depth": 2}
    elif kind == "DecisionTreeClassifier":
        params |= {"max_depth": 2}
    elif kind == "LinearSVC":
        params = {"n_bits": 6}
    elif kind == "Lasso":
        params = {"n_bits": 6, "alpha": 0.01}
    bundle = _compiled_bundle(getattr(cml, kind)(**params), x, y, tmp_path / "bundle")
    assert CircuitClient(bundle / "client.zip", tmp_path / "probe").model_class == kind
    _agrees_with_concrete_ml(bundle, tmp_path / "keys", x[::50])


# Not `fast` (nor the next one): Concrete-ML is the build role, which .venv-fast leaves out.
def test_output_rules_name_concrete_ml_classes() -> None:
    from concrete.ml import sklearn as cml

    for name in OUTPUTS:
        assert getattr(cml, name).__module__.startswith("concrete.ml.sklearn")


def _with_model_class(source: Path, target: Path, name: str) -> Path:
    """A copy of a bundle whose processing names another model class."""
    target.mkdir()
    shutil.copy(source / "server.zip", target / "server.zip")
    with zipfile.ZipFile(source / "client.zip") as original:
        files = {item: original.read(item) for item in original.namelist()}
    processing = json.loads(files["serialized_processing.json"])
    original_type = bytes.fromhex(processing["model_type"]["serialized_value"])
    with zipfile.ZipFile(io.BytesIO(original_type)) as packed_type:
        schema = json.loads(packed_type.read("schema.json"))
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as rewritten_type:
        rewritten_type.writestr("schema.json", json.dumps({**schema, "__class__": name}))
    processing["model_type"]["serialized_value"] = packed.getvalue().hex()
    files["serialized_processing.json"] = json.dumps(processing).encode()
    with zipfile.ZipFile(target / "client.zip", "w") as rewritten:
        for item, data in files.items():
            rewritten.writestr(item, data)
    return target


def test_unknown_model_classes_use_concrete_mls_client(tmp_path: Path) -> None:
    source = REPO / "models" / "breast-cancer"
    assert isinstance(open_circuit_client(source, tmp_path / "a"), CircuitClient)
    other = _with_model_class(source, tmp_path / "sgd", "SGDClassifier")
    fallback = open_circuit_client(other, tmp_path / "b")
    assert isinstance(fallback, ConcreteMLClient)
    row = np.linspace(-1, 1, 30, dtype=np.float32)[None, :]
    light = CircuitClient(source / "client.zip", tmp_path / "c")
    assert np.array_equal(fallback.quantize(row), light.quantize(row))


@pytest.mark.fhe
def test_a_model_class_without_a_rule_runs_through_concrete_mls_client(tmp_path: Path) -> None:
    from concrete.ml.deployment import FHEModelServer
    from concrete.ml.sklearn import SGDClassifier
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0))[:, :8].astype(np.float32)
    model = SGDClassifier(n_bits=6, loss="log_loss", random_state=0)
    bundle = _compiled_bundle(model, x, y, tmp_path / "bundle")
    client = open_circuit_client(bundle, tmp_path / "keys")
    assert isinstance(client, ConcreteMLClient)
    evaluation_keys = client.generate_keys(force=False)
    server = FHEModelServer(str(bundle))
    server.load()
    rows = x[::100]
    for row, expected in zip(rows, model.predict_proba(rows), strict=True):
        result = server.run(client.encrypt(client.quantize(row[None, :])), evaluation_keys)
        np.testing.assert_allclose(client.decrypt(result)[0], expected, atol=1e-9)


@pytest.mark.fhe
def test_forced_keys_are_new_and_kept(tmp_path: Path) -> None:
    bundle = REPO / "models" / "diabetes"
    first = CircuitClient(bundle / "client.zip", tmp_path / "keys")
    first.load_keys()
    secret = sorted((tmp_path / "keys").rglob("secretKey_*"))
    before = hashlib.sha256(b"".join(path.read_bytes() for path in secret)).hexdigest()
    again = CircuitClient(bundle / "client.zip", tmp_path / "keys")
    again.load_keys()
    assert before == hashlib.sha256(b"".join(p.read_bytes() for p in secret)).hexdigest()
    again.generate_keys(force=True)
    secret = sorted((tmp_path / "keys").rglob("secretKey_*"))
    after = hashlib.sha256(b"".join(path.read_bytes() for path in secret)).hexdigest()
    assert after != before


@pytest.mark.fast
def test_inputs_out_of_the_circuits_range_are_refused(tmp_path: Path) -> None:
    light = CircuitClient(REPO / "models" / "sentiment" / "client.zip", tmp_path / "keys")
    low, high = light.input_range
    for outside in (low - 1, high + 1):
        with pytest.raises(ClientError, match="integers of shape"):
            light.encrypt(np.full(light.input_shape, outside))
    with pytest.raises(ClientError, match="integers of shape"):
        light.encrypt(np.zeros((2, *light.input_shape[1:]), dtype=np.int64))
    with pytest.raises(ClientError, match="unreadable"):
        light.decrypt(b"not a ciphertext")


def _client_zip_with(source: Path, target: Path, edit: Any) -> Path:
    """A copy of a bundle's client.zip whose parsed client.specs.json `edit` changed in place."""
    with zipfile.ZipFile(source) as original:
        files = {item: original.read(item) for item in original.namelist()}
    specs = json.loads(files["client.specs.json"])
    edit(specs)
    files["client.specs.json"] = json.dumps(specs).encode()
    with zipfile.ZipFile(target, "w") as rewritten:
        for item, data in files.items():
            rewritten.writestr(item, data)
    return target


def _gate(specs: dict) -> dict:
    return specs["circuits"][0]["inputs"][0]["typeInfo"]["lweCiphertext"]


HOSTILE_SPECS = {
    "two circuits": lambda specs: specs["circuits"].append(specs["circuits"][0]),
    "two inputs": lambda specs: specs["circuits"][0]["inputs"].append(
        specs["circuits"][0]["inputs"][0]
    ),
    "a clear input": lambda specs: specs["circuits"][0]["inputs"][0]["typeInfo"].pop(
        "lweCiphertext"
    ),
    "a shape of text": lambda specs: _gate(specs)["abstractShape"].update(dimensions="1x32"),
    "a 200-bit integer": lambda specs: _gate(specs)["encoding"]["integer"].update(width=200),
    "no circuits": lambda specs: specs.update(circuits="none"),
}


@pytest.mark.fast
@pytest.mark.parametrize("hostile", sorted(HOSTILE_SPECS))
def test_a_hostile_client_zip_is_refused_before_concrete_reads_it(
    hostile: str, tmp_path: Path
) -> None:
    """A server's client.zip is input too: a spec the light client cannot honour is refused
    (UnsupportedProcessing) before any key or ciphertext is made from it."""
    source = REPO / "models" / "sentiment-linear" / "client.zip"
    changed = _client_zip_with(source, tmp_path / "client.zip", HOSTILE_SPECS[hostile])
    with pytest.raises(UnsupportedProcessing):
        CircuitClient(changed, tmp_path / "keys")
    assert not (tmp_path / "keys").exists()


@pytest.mark.fast
def test_an_oversized_or_broken_client_zip_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = REPO / "models" / "sentiment-linear" / "client.zip"
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(source.read_bytes()[:1000])
    with pytest.raises(UnsupportedProcessing, match=r"unexpected client\.zip"):
        CircuitClient(truncated, tmp_path / "keys")
    monkeypatch.setattr("client.circuit_client.MAX_SPEC_BYTES", 64)
    with pytest.raises(UnsupportedProcessing, match="is over 64 bytes"):
        CircuitClient(source, tmp_path / "keys")


@pytest.mark.fhe
def test_the_client_path_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from client.cli import app\n"
        "from client.circuit_client import CircuitClient\n"
        f"c = CircuitClient(Path({str(REPO / 'models' / 'diabetes' / 'client.zip')!r}), "
        "Path(sys.argv[1]))\n"
        "c.encrypt(c.quantize(np.zeros(c.input_shape, dtype=np.float32)))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'concrete'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "keys")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout
    assert "concrete.compiler" in loaded
    assert "'torch" not in loaded and "concrete.ml" not in loaded and "concrete.fhe" not in loaded
