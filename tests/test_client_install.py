"""The light client: `make client-install` into a fresh venv (no torch, transformers, xgboost,
gradio, Concrete-ML or CUDA libraries), predicting through a real server exactly as the full
client does, for text, tabular and raw models; a bundle from an unknown Concrete-ML refused."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fhe.build.dataset import load_split
from fhe.build.tabular_data import load_tabular_split
from tests.conftest import REPO
from tests.support.server_process import ServerProcess

MAX_MB = 600
FORBIDDEN = ("torch", "transformers", "xgboost", "gradio", "sklearn", "concrete/ml", "nvidia")
"""Packages a client install must not hold (scikit-learn too: the shipped preprocessing is plain
JSON)."""


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv made by `make client-install VENV=...`, the command the README gives."""
    venv = tmp_path_factory.mktemp("light") / "venv"
    run = subprocess.run(
        ["make", "-C", str(REPO), "client-install", f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "client install: " in run.stdout
    return venv


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _megabytes(path: Path) -> int:
    run = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True)
    return int(run.stdout.split()[0])


def test_light_install_is_small_and_holds_no_build_stack(light_venv: Path) -> None:
    site = _site_packages(light_venv)
    size = _megabytes(light_venv)
    print(f"client install: {size} MB")
    assert size < MAX_MB
    for name in FORBIDDEN:
        assert not (site / name).exists(), name
    assert not list(site.glob("nvidia*")), list(site.glob("nvidia*"))
    listed = subprocess.run(
        [str(light_venv / "bin" / "pip"), "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    for name in ("torch", "transformers", "xgboost", "gradio", "concrete-ml", "scikit-learn"):
        assert name not in names
    assert {"concrete-python", "onnxruntime", "tokenizers", "fhe-inference"} <= names


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped FHE bundles and a bare FHEModelDev directory (a raw model)."""
    from tests.test_tabular import _bare_directory

    root = tmp_path_factory.mktemp("light-models")
    for name in ("sentiment", "sentiment-linear", "breast-cancer", "diabetes"):
        (root / name).symlink_to(REPO / "models" / name)
    _bare_directory(root / "bare")
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(models, tmp_path_factory.mktemp("light-server") / "data").start()
    yield process
    process.stop()


def _predict(
    bin_dir: Path, args: list[str], server: ServerProcess, cache: Path
) -> list[dict[str, object]]:
    env = {**os.environ, "FHE_CLIENT_CACHE": str(cache)}
    env.pop("FHE_CLIENT_EMBEDDER_CACHE", None)  # each install downloads the bundle's own files
    run = subprocess.run(
        [str(bin_dir / "fhe-client"), "predict", "--server", server.url, "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def _both(
    light_venv: Path, args: list[str], server: ServerProcess, tmp_path: Path
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    from tests.support.server_process import BIN

    light = _predict(light_venv / "bin", args, server, tmp_path / "light")
    full = _predict(BIN, args, server, tmp_path / "full")
    assert len(light) == len(full) > 0
    return light, full


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
    return path


@pytest.mark.fhe
@pytest.mark.parametrize(("model", "count"), [("sentiment-linear", 20), ("sentiment", 5)])
def test_light_client_labels_texts_as_the_full_client(
    light_venv: Path, server: ServerProcess, tmp_path: Path, model: str, count: int
) -> None:
    """20 test tweets through the linear circuit, 5 through the trees (1.4 s of FHE each):
    both embed with the same ONNX file, so the embedding path is the same for both."""
    texts = load_split().test_texts[:count]
    source = _csv(tmp_path / "texts.csv", ["text"], [[text] for text in texts])
    light, full = _both(light_venv, ["--model", model, "--input", str(source)], server, tmp_path)
    assert [p["label"] for p in light] == [p["label"] for p in full]
    assert [p["scores"] for p in light] == [p["scores"] for p in full]
    assert len(light) == count


@pytest.mark.fhe
def test_light_client_labels_every_breast_cancer_row_as_the_full_client(
    light_venv: Path, server: ServerProcess, tmp_path: Path
) -> None:
    split = load_tabular_split("sklearn:breast_cancer", "classification")
    frame = split.x_test
    rows = frame.values.tolist()
    source = _csv(tmp_path / "rows.csv", list(frame.columns), rows)
    args = ["--model", "breast-cancer", "--input", str(source)]
    light, full = _both(light_venv, args, server, tmp_path)
    assert len(light) == len(rows)
    assert [p["label"] for p in light] == [p["label"] for p in full]
    truth = [split.labels[int(y)] for y in split.y_test]
    agree = sum(p["label"] == y for p, y in zip(light, truth, strict=True)) / len(rows)
    assert agree > 0.9  # the card: 96.49% on these rows


@pytest.mark.fhe
def test_light_client_regression_and_raw_rows_equal_the_full_client(
    light_venv: Path, server: ServerProcess, tmp_path: Path
) -> None:
    split = load_tabular_split("sklearn:diabetes", "regression")
    source = _csv(tmp_path / "rows.csv", list(split.x_test.columns), split.x_test.values.tolist())
    light, full = _both(
        light_venv, ["--model", "diabetes", "--input", str(source)], server, tmp_path
    )
    assert [p["value"] for p in light] == [p["value"] for p in full]
    assert len(light) == len(split.x_test)
    args = ["--model", "bare", "--row", "[5.1, 3.5, 1.4, 0.2]", "--row", "[6.7, 3.0, 5.2, 2.3]"]
    light, full = _both(light_venv, args, server, tmp_path / "raw")
    assert [p["output"] for p in light] == [p["output"] for p in full]
    assert [int(max(range(3), key=p["output"].__getitem__)) for p in light] == [0, 2]


def _future_bundle(tmp_path: Path) -> Path:
    """sentiment-linear's client files, its client.zip saying another Concrete-ML made it."""
    bundle = tmp_path / "future"
    bundle.mkdir()
    with (
        zipfile.ZipFile(REPO / "models" / "sentiment-linear" / "client.zip") as source,
        zipfile.ZipFile(bundle / "client.zip", "w") as target,
    ):
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "versions.json":
                versions = json.loads(data)
                versions["concrete-ml"] = "9.9.9"
                data = json.dumps(versions).encode()
            target.writestr(item, data)
    return bundle


def test_light_client_refuses_a_bundle_of_an_unknown_concrete_ml(
    light_venv: Path, tmp_path: Path
) -> None:
    bundle = _future_bundle(tmp_path)
    probe = (
        "import sys; from pathlib import Path\n"
        "from client.circuit_client import open_circuit_client\n"
        "from client.errors import ClientError\n"
        "try:\n"
        "    open_circuit_client(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "except ClientError as error:\n"
        "    print(error); sys.exit(3)\n"
    )
    run = subprocess.run(
        [str(light_venv / "bin" / "python"), "-c", probe, str(bundle), str(tmp_path / "keys")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 3, run.stdout + run.stderr
    assert "Concrete-ML 9.9.9" in run.stdout and "Concrete-ML 1.9.0" in run.stdout
    assert "install the full client" in run.stdout
    shutil.rmtree(bundle)
