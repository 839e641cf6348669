"""Encrypted tabular models end to end against a real fhe-server: bundles trained by the tabular
recipe (classification and regression, from scikit-learn data and from a CSV), a bare
FHEModelDev directory served as raw, and conversions of clear skops models; real keys, real
encryption and real FHE."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from client.api import FHEServerAPI
from client.encrypted_model import ColumnWarning, EncryptedModel
from client.errors import ClientError
from client.settings import ClientSettings
from fhe.build.convert import ConversionRefused, convert
from fhe.build.tabular_bundle import Measured
from fhe.build.tabular_data import load_tabular_split
from fhe.build.tabular_recipe import TabularRecipeConfig, train_tabular
from fhe.contract.bundle import TabularMetrics, read_metadata
from fhe.contract.sklearn_files import ModelPolicy
from tests.conftest import SKLEARN_FIXTURES, run_client
from tests.support.server_process import ServerProcess

IRIS_LINEAR = SKLEARN_FIXTURES / "tabular-classification-linear-skops-sk1.5.0"
HGB_PICKLE = SKLEARN_FIXTURES / "tabular-classification-hgb-pickle-sk1.5.0"
UNTRUSTED = SKLEARN_FIXTURES / "tabular-classification-untrusted-skops-sk1.5.0"


@dataclass
class Built:
    """What the module's models directory holds, with what their builds measured."""

    root: Path
    cancer: Measured
    cancer_rows: pd.DataFrame
    health: Measured
    health_rows: pd.DataFrame
    health_float: np.ndarray
    iris_calibration: Path
    iris_linear: Measured
    iris_tree: Measured
    tree_source: Path
    torch_module: object


def _health_csv(path: Path) -> Path:
    """The diabetes data as a CSV with a text column (sex) and a few missing values."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    frame["sex"] = np.where(frame["sex"] > 0, "male", "female")
    frame.loc[::37, "bmi"] = np.nan
    frame.to_csv(path, index=False)
    return path


def _tree_model(path: Path) -> Path:
    """A clear skops model directory: scaler + decision tree on iris, config.json written."""
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    data = load_iris(as_frame=True)
    tree = DecisionTreeClassifier(max_depth=3, random_state=0)
    pipeline = Pipeline([("scaler", StandardScaler()), ("model", tree)])
    pipeline.fit(data.data, np.asarray(data.target_names)[data.target])
    path.mkdir()
    sio.dump(pipeline, path / "model.skops")
    config = {
        "sklearn": {
            "model": {"file": "model.skops"},
            "model_format": "skops",
            "task": "tabular-classification",
            "columns": list(data.data.columns),
        }
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def _bare_directory(path: Path) -> tuple[Path, object]:
    """What FHEModelDev.save() writes for a small Concrete-ML tree, and the model."""
    from concrete.ml.deployment import FHEModelDev
    from concrete.ml.sklearn import DecisionTreeClassifier
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    model = DecisionTreeClassifier(n_bits=3, max_depth=3, random_state=0).fit(x, y)
    model.compile(x)
    FHEModelDev(str(path), model).save()
    return path, model


def _torch_bare_directory(path: Path) -> object:
    """What FHEModelDev.save() writes for a small torch model taking a 2 x 3 array; its
    quantized module."""
    import torch
    from concrete.ml.deployment import FHEModelDev
    from concrete.ml.torch.compile import compile_torch_model

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    inputs = np.random.default_rng(0).uniform(-1, 1, (64, 2, 3)).astype(np.float32)
    module = compile_torch_model(network, inputs, n_bits=6, rounding_threshold_bits=None)
    FHEModelDev(str(path), module).save()
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Train, convert and save the module's models (about a minute on 2 cores)."""
    root = tmp_path_factory.mktemp("tabular-models")
    work = tmp_path_factory.mktemp("tabular-work")
    # Concrete-ML's own breast-cancer deployment configuration: 10 trees, depth 3, 2 bits.
    cancer = train_tabular(
        TabularRecipeConfig(
            out=root / "cancer",
            name="cancer",
            data="sklearn:breast_cancer",
            model_types=["xgb"],
            n_bits=[2],
            max_depth=[3],
            n_estimators=[10],
            cv_folds=2,
            fhe_sample=2,
        )
    )
    health_csv = _health_csv(work / "health.csv")
    health = train_tabular(
        TabularRecipeConfig(
            out=root / "health",
            name="health",
            data=str(health_csv),
            task="regression",
            label_column="target",
            model_types=["linear"],
            linear_n_bits=[6],
            cv_folds=2,
            fhe_sample=3,
            clear_twin=root / "health-clear",
        )
    )
    health_split = load_tabular_split(str(health_csv), "regression", label_column="target")
    twin = _load_twin(root / "health-clear")
    calibration = work / "iris.csv"
    from sklearn.datasets import load_iris

    load_iris(as_frame=True).data.sample(40, random_state=1).to_csv(calibration, index=False)
    iris_linear = convert(IRIS_LINEAR, calibration, root / "iris-linear", fhe_sample=3)
    tree_source = _tree_model(work / "iris-tree-clear")
    iris_tree = convert(tree_source, calibration, root / "iris-tree", n_bits=4, fhe_sample=3)
    _bare_directory(root / "bare")
    torch_module = _torch_bare_directory(root / "bare-torch")
    return Built(
        root=root,
        cancer=cancer,
        cancer_rows=load_tabular_split("sklearn:breast_cancer", "classification").x_test,
        health=health,
        health_rows=health_split.x_test,
        health_float=twin.predict(health_split.x_test),
        iris_calibration=calibration,
        iris_linear=iris_linear,
        iris_tree=iris_tree,
        tree_source=tree_source,
        torch_module=torch_module,
    )


def _load_twin(path: Path) -> object:
    from fhe.contract.sklearn_files import load_estimator

    return load_estimator(path / "model.skops", "skops", ModelPolicy())


@pytest.fixture(scope="module")
def server(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One fhe-server over the module's models."""
    process = ServerProcess(built.root, tmp_path_factory.mktemp("tabular-server") / "data")
    yield process.start()
    process.stop()


def _remote(server: ServerProcess, name: str, cache: Path) -> Iterator[EncryptedModel]:
    settings = ClientSettings(server_url=server.url, cache_dir=cache)
    with FHEServerAPI(settings=settings) as api:
        yield EncryptedModel(api, name, cache)


@pytest.mark.fhe
def test_listing_and_cards_show_input_task_columns_and_origin(
    built: Built, server: ServerProcess, client_env: dict[str, str]
) -> None:
    listing = {row["name"]: row for row in httpx.get(f"{server.url}/v1/models").json()["models"]}
    assert listing["cancer"]["input"] == "tabular"
    assert listing["cancer"]["task"] == "tabular-classification"
    assert listing["cancer"]["labels"] == ["benign", "malignant"]
    assert len(listing["cancer"]["columns"]) == 30
    assert listing["health"]["task"] == "tabular-regression"
    assert listing["health"]["columns"][:3] == ["age", "sex", "bmi"]
    assert listing["health-clear"]["kind"] == "clear"
    assert listing["health-clear"]["status"] == "ready", listing["health-clear"]
    assert listing["bare"]["input"] == "raw" and listing["bare"]["task"] == "raw"
    assert all(row["status"] == "ready" for row in listing.values()), listing
    assert listing["iris-tree"]["origin"] == {
        "converted_from": "iris-tree-clear",
        "estimator": "sklearn.tree._classes.DecisionTreeClassifier",
        "agreement": built.iris_tree.metadata.conversion.agreement,
        "max_abs_difference": None,
    }
    health_metrics = built.health.metadata.metrics
    assert listing["health"]["origin"]["clear_twin"] == "health-clear"
    assert listing["health"]["origin"]["max_abs_difference"] == (
        health_metrics.max_quantization_error
    )
    assert listing["bare"]["origin"] is None and listing["health-clear"]["origin"] is None
    shown = run_client(["models", "--server", server.url], {**client_env, "COLUMNS": "300"})
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[1]: line for line in shown.stdout.splitlines() if "│" in line}
    agreement = built.iris_tree.metadata.conversion.agreement
    assert f"iris-tree-clear (converted, {agreement:.1%} agree)" in lines["iris-tree"]
    assert "tabular, 30 columns" in lines["cancer"]
    assert "health-clear (twin, max diff" in lines["health"]
    assert "raw" in lines["bare"]

    health = httpx.get(f"{server.url}/v1/models/health").json()
    assert health["metadata"]["input"]["categorical"] == ["sex"]
    assert "bmi" in health["metadata"]["input"]["preprocessing"]["imputes"]
    assert health["metadata"]["clear_twin"] == "health-clear"
    assert "clear twin, `health-clear`" in health["card"]

    converted = httpx.get(f"{server.url}/v1/models/iris-tree").json()
    conversion = converted["metadata"]["conversion"]
    assert conversion["source"] == "iris-tree-clear"
    assert conversion["estimator"] == "sklearn.tree._classes.DecisionTreeClassifier"
    assert conversion["agreement"] == built.iris_tree.metadata.conversion.agreement
    assert "Converted from `iris-tree-clear`" in converted["card"]

    served = httpx.get(f"{server.url}/v1/models/health/preprocessing")
    assert served.status_code == 200
    step = health["metadata"]["input"]["preprocessing"]
    assert served.headers["x-content-sha256"] == step["sha256"]
    assert len(served.content) == step["bytes"]
    for name, code in (("bare", "no_preprocessing"), ("nosuch", "unknown_model")):
        refused = httpx.get(f"{server.url}/v1/models/{name}/preprocessing")
        assert refused.status_code == 404, refused.text
        assert refused.json()["code"] == code and refused.json()["error"], refused.text
    assert httpx.get(f"{server.url}/v1/models/../preprocessing").status_code == 404

    bare = httpx.get(f"{server.url}/v1/models/bare").json()
    assert bare["metadata"]["input"] == {"kind": "raw", "features": 4, "shape": [4]}
    assert "DecisionTreeClassifier" in bare["card"] and "FHEModelDev" in bare["card"]


@pytest.mark.fhe
def test_classification_csv_labels_equal_the_clear_quantized_model(
    built: Built, server: ServerProcess, client_env: dict[str, str], tmp_path: Path
) -> None:
    rows = built.cancer_rows.head(3)
    rows.insert(0, "patient", ["a", "b", "c"])
    source = tmp_path / "rows.csv"
    rows.to_csv(source, index=False)
    out = tmp_path / "out.csv"
    args = ["predict", "-m", "cancer", "--server", server.url, "--input", str(source)]
    result = run_client([*args, "--output", str(out)], client_env)
    assert result.returncode == 0, result.stderr
    assert "were given but not expected: {'patient'}" in result.stderr
    written = list(csv.DictReader(out.open()))
    labels = built.cancer.metadata.labels
    assert [row["label"] for row in written] == [labels[i] for i in built.cancer.quantized[:3]]
    assert [row["patient"] for row in written] == ["a", "b", "c"]
    assert list(written[0])[-4:] == ["label", "score_benign", "score_malignant", "seconds"]
    again = run_client([*args, "--output", str(out)], client_env)
    assert again.returncode == 0 and "3 rows in" in again.stderr, again.stderr


@pytest.mark.fhe
def test_one_row_as_json_and_a_dataframe_through_the_python_api(
    built: Built, server: ServerProcess, client_env: dict[str, str], tmp_path: Path
) -> None:
    row = json.dumps(built.cancer.metadata.input.example)
    result = run_client(
        ["predict", "-m", "cancer", "--server", server.url, "--row", row, "--json"], client_env
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    labels = built.cancer.metadata.labels
    assert answer["label"] == labels[built.cancer.quantized[0]]
    assert answer["row"] == built.cancer.metadata.input.example

    for remote in _remote(server, "health", tmp_path / "api"):
        predictions = remote.predict(built.health_rows.head(4))
        values = np.array([prediction.value for prediction in predictions])
        with pytest.warns(ColumnWarning, match="given but not expected: {'patient'}"):
            extra = remote.predict([{**built.health_rows.iloc[0].to_dict(), "patient": "p1"}])
    assert np.allclose(values, built.health.quantized[:4], atol=1e-6)
    assert extra[0].value == predictions[0].value


@pytest.mark.fhe
def test_regression_values_within_the_stated_quantization_error(
    built: Built, server: ServerProcess, client_env: dict[str, str], tmp_path: Path
) -> None:
    metrics = built.health.metadata.metrics
    assert isinstance(metrics, TabularMetrics) and metrics.max_quantization_error is not None
    records = built.health_rows.head(5).to_dict(orient="records")
    args = ["predict", "-m", "health", "--server", server.url, "--json"]
    for record in records:
        args += ["--row", json.dumps({k: (None if pd.isna(v) else v) for k, v in record.items()})]
    result = run_client(args, client_env)
    assert result.returncode == 0, result.stderr
    values = np.array([json.loads(line)["value"] for line in result.stdout.splitlines()])
    assert np.all(np.abs(values - built.health_float[:5]) <= metrics.max_quantization_error + 1e-6)
    assert np.allclose(values, built.health.quantized[:5], atol=1e-6)


@pytest.mark.fhe
def test_a_missing_imputed_column_is_a_warning_a_missing_needed_one_an_error(
    built: Built, server: ServerProcess, client_env: dict[str, str], tmp_path: Path
) -> None:
    rows = built.health_rows.head(2)
    base = ["predict", "-m", "health", "--server", server.url]
    without_bmi = tmp_path / "no-bmi.csv"
    rows.drop(columns=["bmi"]).to_csv(without_bmi, index=False)
    imputed = run_client([*base, "--input", str(without_bmi)], client_env)
    assert imputed.returncode == 0, imputed.stderr
    assert "expected but not given: {'bmi'} (imputed" in imputed.stderr

    cancer = built.cancer_rows.head(2).drop(columns=["mean radius", "worst area"])
    source = tmp_path / "short.csv"
    cancer.to_csv(source, index=False)
    refused = run_client(
        ["predict", "-m", "cancer", "--server", server.url, "--input", str(source)], client_env
    )
    assert refused.returncode == 1
    assert "The following columns were expected but not given:" in refused.stderr
    assert "'mean radius'" in refused.stderr and "'worst area'" in refused.stderr
    assert not (Path(client_env["FHE_CLIENT_CACHE"]) / "cancer").exists()

    whole = built.cancer_rows.iloc[0].to_dict()
    short = {key: value for key, value in whole.items() if key != "mean texture"}
    rows_given = ["predict", "-m", "cancer", "--server", server.url]
    second_short = run_client(
        [*rows_given, "--row", json.dumps(whole), "--row", json.dumps(short)], client_env
    )
    assert second_short.returncode == 1
    assert "expected but not given: {'mean texture'}" in second_short.stderr


@pytest.mark.fhe
def test_input_kinds_are_refused_with_what_the_model_takes(
    built: Built, server: ServerProcess, client_env: dict[str, str]
) -> None:
    text = run_client(["predict", "-m", "cancer", "--server", server.url, "a sentence"], client_env)
    assert text.returncode == 1
    assert "takes table rows, not text" in text.stderr and "--row" in text.stderr
    row = json.dumps({**built.health.metadata.input.example, "age": "old"})
    bad_value = run_client(
        ["predict", "-m", "health", "--server", server.url, "--row", row], client_env
    )
    assert bad_value.returncode == 1 and "column 'age' must be a number" in bad_value.stderr
    short = run_client(
        ["predict", "-m", "bare", "--server", server.url, "--row", "[1, 2]"], client_env
    )
    assert short.returncode == 1 and "has 2 numbers, the model takes 4" in short.stderr


@pytest.mark.fhe
def test_a_bare_fhemodeldev_directory_is_served_as_raw(
    built: Built, server: ServerProcess, client_env: dict[str, str], tmp_path: Path
) -> None:
    from sklearn.datasets import load_iris

    x, _ = load_iris(return_X_y=True)
    np.save(tmp_path / "rows.npy", x[[0, 60, 120]])
    result = run_client(
        [
            "predict", "-m", "bare", "--server", server.url, "--input",
            str(tmp_path / "rows.npy"), "--json",
        ],
        client_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outputs = np.array([json.loads(line)["output"] for line in result.stdout.splitlines()])
    _, model = _bare_directory(tmp_path / "again")
    assert np.allclose(outputs, model.predict_proba(x[[0, 60, 120]]), atol=1e-6)
    assert outputs.argmax(axis=1).tolist() == [0, 1, 2]


@pytest.mark.fhe
def test_a_bare_torch_model_takes_an_array_of_its_input_shape(
    built: Built, server: ServerProcess, client_env: dict[str, str], tmp_path: Path
) -> None:
    info = httpx.get(f"{server.url}/v1/models/bare-torch").json()["metadata"]["input"]
    assert info == {"kind": "raw", "features": 6, "shape": [2, 3]}
    arrays = np.random.default_rng(1).uniform(-1, 1, (3, 2, 3))
    np.save(tmp_path / "arrays.npy", arrays)
    flat = [
        "predict", "-m", "bare-torch", "--server", server.url, "--json",
        "--row", json.dumps(arrays[0].ravel().tolist()),
    ]  # fmt: skip
    numbers = tmp_path / "arrays.csv"
    numbers.write_text("a,b,c,d,e,f\n" + "\n".join(",".join(map(str, a.ravel())) for a in arrays))
    whole = ["predict", "-m", "bare-torch", "--server", server.url, "--json", "--input"]
    outputs = []
    for args in (flat, [*whole, str(tmp_path / "arrays.npy")], [*whole, str(numbers)]):
        result = run_client(args, client_env)
        assert result.returncode == 0, result.stderr
        outputs += [json.loads(line)["output"] for line in result.stdout.splitlines()]
    expected = built.torch_module.forward(arrays.astype(np.float32), fhe="simulate")
    assert np.allclose(outputs, [expected[0], *expected, *expected], atol=1e-6)
    short = run_client([*flat[:-1], "[1, 2, 3]"], client_env)
    assert short.returncode == 1 and "has 3 numbers, the model takes 6" in short.stderr


@pytest.mark.fhe
def test_converted_models_agree_with_the_clear_model_as_their_cards_say(
    built: Built, server: ServerProcess, tmp_path: Path
) -> None:
    from fhe.contract.sklearn_files import load_estimator

    rows = pd.read_csv(built.iris_calibration)
    for name, measured, source in (
        ("iris-linear", built.iris_linear, IRIS_LINEAR),
        ("iris-tree", built.iris_tree, built.tree_source),
    ):
        clear = load_estimator(source / "model.skops", "skops", ModelPolicy())
        clear_labels = [str(label) for label in clear.predict(rows)]
        labels = measured.metadata.labels
        simulated = [labels[i] for i in measured.simulated]
        card = read_metadata(built.root / name).conversion
        assert card is not None and card.calibration_rows == len(rows)
        assert card.agreement == pytest.approx(
            np.mean(np.array(simulated) == np.array(clear_labels))
        )
        assert card.agreement >= 0.9, (name, card.agreement)
        for remote in _remote(server, name, tmp_path / name):
            encrypted = [p.label for p in remote.predict(rows.head(4).to_dict(orient="records"))]
        assert encrypted == simulated[:4], name


@pytest.mark.fhe
def test_conversions_refused_with_the_reason(built: Built, tmp_path: Path) -> None:
    with pytest.raises(ConversionRefused) as unsupported:
        convert(
            HGB_PICKLE,
            built.iris_calibration,
            tmp_path / "hgb",
            policy=ModelPolicy(allow_pickle=True),
        )
    message = str(unsupported.value)
    assert "HistGradientBoostingClassifier" in message
    assert "LogisticRegression" in message and "XGBClassifier" in message

    with pytest.raises(ConversionRefused) as pickled:
        convert(HGB_PICKLE, built.iris_calibration, tmp_path / "pickle")
    assert "pickle is not allowed" in str(pickled.value)

    with pytest.raises(ConversionRefused) as unauditable:
        convert(
            UNTRUSTED,
            built.iris_calibration,
            tmp_path / "untrusted",
            policy=ModelPolicy(trusted_types=["numpy.core._multiarray_umath.log1p"]),
        )
    assert "preprocessing cannot be audited by clients" in str(unauditable.value)
    assert "log1p" in str(unauditable.value)

    text_model = SKLEARN_FIXTURES / "text-classification-linear-skops-sk1.5.0"
    with pytest.raises(ConversionRefused, match="vectorizer") as vectorized:
        convert(text_model, built.iris_calibration, tmp_path / "text")
    assert "TfidfVectorizer" in str(vectorized.value)
    assert "LogisticRegression" in str(vectorized.value)
    assert "XGBClassifier" in str(vectorized.value)

    missing = tmp_path / "missing.csv"
    pd.read_csv(built.iris_calibration).drop(columns=["petal width (cm)"]).to_csv(missing)
    with pytest.raises(ConversionRefused, match="expected but not given"):
        convert(IRIS_LINEAR, missing, tmp_path / "missing")


@pytest.mark.fhe
def test_the_command_line_converter_exits_2_with_the_refusal(
    built: Built, client_env: dict[str, str], tmp_path: Path
) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable, "-m", "fhe.build.convert", str(HGB_PICKLE), "--calibration",
            str(built.iris_calibration), "--out", str(tmp_path / "out"),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "pass --allow-pickle" in result.stdout + result.stderr


def test_the_grid_searches_the_pbs_error_rate_under_fhe_simulation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sklearn.datasets import load_breast_cancer

    import fhe.build.tabular_recipe
    from fhe.build.tabular_recipe import search_grid

    compiled_at: list[float | None] = []
    real_compile = fhe.build.tabular_recipe.compile_model

    def recording_compile(model, x, p_error):  # the real compiler, noting each error rate
        compiled_at.append(p_error)
        return real_compile(model, x, p_error)

    monkeypatch.setattr(fhe.build.tabular_recipe, "compile_model", recording_compile)

    x, y = load_breast_cancer(return_X_y=True)
    config = TabularRecipeConfig(
        out=Path("unused"),
        name="grid",
        data="sklearn:breast_cancer",
        model_types=["xgb", "linear"],
        n_bits=[2],
        max_depth=[2],
        n_estimators=[3],
        linear_n_bits=[4],
        p_errors=[1e-6, 0.1],
        cv_folds=2,
    )
    model, model_type, params, p_error, rows = search_grid(config, x[:200], y[:200])
    tried = [(row["model_type"], row["p_error"]) for row in rows]
    assert tried == [("xgb", 0.1), ("xgb", 1e-6), ("linear", 1e-6)]
    # each setting: one compile per CV fold (2) to simulate at its rate, then the final one
    assert compiled_at == [0.1] * 3 + [1e-6] * 6
    best = max(rows, key=lambda row: row["cv_score"])
    assert (model_type, p_error) == (best["model_type"], best["p_error"])
    assert params == best["params"] and model is not None


@pytest.mark.fast
def test_a_raw_shape_must_hold_the_features() -> None:
    from pydantic import ValidationError

    from fhe.contract.bundle import RawInput

    assert RawInput(features=6, shape=[2, 3]).shape == [2, 3]
    for shape in ([2, 2], [0, 6], []):
        with pytest.raises(ValidationError, match="does not hold 6 numbers"):
            RawInput(features=6, shape=shape)


@pytest.mark.fast
def test_tabular_rows_read_the_cards_typed_input() -> None:
    """TabularRows takes the card's TabularInput: its columns, dtypes and imputed columns."""
    from client.row_features import ColumnsMismatch, TabularRows
    from fhe.contract.bundle import TabularInput

    info = TabularInput.model_validate(
        {
            "columns": [{"name": "age", "dtype": "float64"}, {"name": "smoker", "dtype": "bool"}],
            "features": 2,
            "preprocessing": {"sha256": "0" * 64, "bytes": 1, "steps": [], "imputes": ["age"]},
        }
    )
    rows = TabularRows(info)
    assert rows.names == ["age", "smoker"] and rows.imputes == {"age"}
    assert rows.check_columns(["smoker", "colour"]) == [
        "The following columns were given but not expected: {'colour'}",
        "The following columns were expected but not given: {'age'}"
        " (imputed by the model's preprocessing)",
    ]
    with pytest.raises(ColumnsMismatch, match=r"not given: \{'smoker'\} \(\['age'\] would be"):
        rows.check_columns([])
    assert rows.encode({"age": "41", "smoker": "true"}).tolist() == [[41.0, 1.0]]
    with pytest.raises(ClientError, match="'smoker' must be true or false"):
        rows.encode({"age": 41, "smoker": "maybe"})


@pytest.mark.fast
def test_a_clear_twin_of_trees_is_refused_before_training(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable, "-m", "fhe.build.tabular_recipe", "--out", str(tmp_path / "b"),
            "--name", "b", "--data", "sklearn:breast_cancer", "--model-types", "xgb",
            "--clear-twin", str(tmp_path / "twin"),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "a clear twin needs a linear model" in result.stderr
    assert not (tmp_path / "b").exists()


def test_a_text_model_is_refused_a_row(
    tiny_server: ServerProcess, client_env: dict[str, str]
) -> None:
    result = run_client(
        ["predict", "-m", "tiny", "--server", tiny_server.url, "--row", '{"a": 1}'], client_env
    )
    assert result.returncode == 1
    assert "takes text, not a row" in result.stderr


@pytest.mark.fhe
def test_tabular_client_refuses_text_in_the_python_api(
    built: Built, server: ServerProcess, tmp_path: Path
) -> None:
    for remote in _remote(server, "cancer", tmp_path):
        with pytest.raises(ClientError, match="takes table rows"):
            remote.predict(["a sentence"])


@pytest.mark.fhe
def test_a_preprocessing_that_changed_on_disk_makes_the_bundle_unloadable(
    built: Built, tmp_path: Path
) -> None:
    from server.models.registry import load_fhe_model

    copy = tmp_path / "health"
    shutil.copytree(built.root / "health", copy)
    with (copy / "preprocessing.skops").open("ab") as handle:
        handle.write(b"\0")
    model = load_fhe_model(copy)
    assert not model.ready and "preprocessing.skops does not match" in (model.reason or "")
