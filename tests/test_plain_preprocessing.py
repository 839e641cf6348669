"""Tabular preprocessing as plain parameters (JSON, applied with numpy): the same features as the
scikit-learn transformer, hostile files refused, and the shipped bundles' files checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fhe.build.preprocessing import NotPlain, build_preprocessing, plain_preprocessing
from fhe.build.tabular_data import load_tabular_split
from fhe.contract.bundle import read_metadata
from fhe.contract.digest import file_sha256
from fhe.contract.preprocessing import (
    PlainPreprocessing,
    UnusablePreprocessing,
    load_preprocessing,
)
from server.settings import SHIPPED_MODELS_DIR

pytestmark = pytest.mark.fast


def _table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, 60),
            "income": rng.normal(3000, 800, 60),
            "city": rng.choice(["Paris", "Lyon", "Nice"], 60).astype(object),
            "plan": rng.choice(["a", "b"], 60).astype(object),
        }
    )
    frame.loc[::7, "income"] = np.nan
    frame.loc[::5, "plan"] = np.nan  # as pandas reads an empty CSV cell
    return frame


def _transformed(plain: PlainPreprocessing, frame: pd.DataFrame) -> np.ndarray:
    return np.vstack([plain.transform(row) for row in frame.to_dict(orient="records")])


def test_plain_parameters_give_the_transformers_features() -> None:
    frame = _table()
    transformer = build_preprocessing(["age", "income"], ["city", "plan"], ["income", "plan"]).fit(
        frame
    )
    plain = plain_preprocessing(transformer, list(frame.columns))
    expected = transformer.transform(frame)
    assert plain.width == expected.shape[1] == 2 + 3 + 2
    assert np.allclose(_transformed(plain, frame), expected, atol=1e-12)
    unknown = {"age": 30.0, "income": np.nan, "city": "Brest", "plan": np.nan}
    known = pd.DataFrame([unknown]).astype({"city": object, "plan": object})
    assert np.allclose(plain.transform(unknown), transformer.transform(known))
    assert plain.transform(unknown)[0, 2:5].tolist() == [0.0, 0.0, 0.0]  # an unknown city
    assert np.array_equal(plain.transform({**unknown, "plan": None}), plain.transform(unknown))


def test_a_required_column_missing_is_refused() -> None:
    frame = _table()
    transformer = build_preprocessing(["age", "income"], ["city"], ["income"]).fit(frame)
    plain = plain_preprocessing(transformer, list(frame.columns))
    with pytest.raises(UnusablePreprocessing, match="'age' is missing"):
        plain.transform({"income": 1.0, "city": "Paris"})
    with pytest.raises(UnusablePreprocessing, match="must be a number"):
        plain.transform({"age": "old", "income": 1.0, "city": "Paris"})


def test_steps_that_plain_parameters_do_not_describe_are_refused() -> None:
    from sklearn.preprocessing import PolynomialFeatures

    frame = _table()[["age", "income"]].fillna(0)
    with pytest.raises(NotPlain, match="PolynomialFeatures"):
        plain_preprocessing(PolynomialFeatures().fit(frame), list(frame.columns))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"format": 2, "parts": []}',
        b'{"format": 1, "parts": [{"columns": ["a"], "steps": [{"kind": "scale", '
        b'"offset": [0, 1], "scale": [1, 1]}]}]}',
        b'{"format": 1, "parts": [{"columns": ["a"], "steps": [{"kind": "scale", '
        b'"offset": [0], "scale": [0]}]}]}',
        b'{"format": 1, "parts": [{"columns": ["a"], "steps": [{"kind": "eval", "code": "x"}]}]}',
        b'{"format": 1, "parts": [{"columns": ["a"], "steps": [{"kind": "onehot", '
        b'"categories": [["x"]]}, {"kind": "impute", "values": [1]}]}]}',
        b'{"format": 1, "parts": [{"columns": [], "steps": []}]}',
    ],
)
def test_hostile_plain_files_are_refused(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "preprocessing.json"
    path.write_bytes(body)
    with pytest.raises(UnusablePreprocessing):
        PlainPreprocessing.load(path)


def test_an_oversized_plain_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "preprocessing.json"
    path.write_bytes(b" " * (16 * 1024 * 1024 + 1))
    with pytest.raises(UnusablePreprocessing, match="larger than"):
        PlainPreprocessing.load(path)


@pytest.mark.parametrize(
    ("name", "data", "task"),
    [
        ("breast-cancer", "sklearn:breast_cancer", "classification"),
        ("diabetes", "sklearn:diabetes", "regression"),
    ],
)
def test_shipped_plain_preprocessing_equals_the_skops_one(name: str, data: str, task: str) -> None:
    bundle = SHIPPED_MODELS_DIR / name
    step = read_metadata(bundle).input.preprocessing
    assert step is not None and step.plain_file is not None
    assert file_sha256(bundle / step.plain_file) == step.plain_sha256
    assert json.loads((bundle / step.plain_file).read_text())["format"] == 1
    plain = PlainPreprocessing.load(bundle / step.plain_file)
    transformer = load_preprocessing(bundle / step.file)
    split = load_tabular_split(data, task)
    rows = pd.concat([split.x_train, split.x_test])
    assert np.allclose(_transformed(plain, rows), transformer.transform(rows), atol=1e-12)
