"""A labelled table for tabular training: read from a CSV or a dataset scikit-learn ships, its
feature columns with their dtypes, which are categorical, and the fixed held-out split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from fhe.contract.bundle import Column
from fhe.contract.digest import file_sha256

SKLEARN_DATASETS = ("breast_cancer", "diabetes", "iris", "wine")
"""Datasets scikit-learn ships (no download), named `sklearn:<name>` in place of a CSV path."""
SKLEARN_LICENSE = "BSD-3-Clause (shipped with scikit-learn; the original sources are in its docs)"

TASKS = ("classification", "regression")


def read_table(data: str, label_column: str | None) -> tuple[pd.DataFrame, str, str, str]:
    """The table, its label column, where it came from and its sha256.

    `sklearn:<name>` reads a dataset scikit-learn ships: its label column is `target`, holding
    class names for classifiers.
    """
    if data.startswith("sklearn:"):
        name = data.removeprefix("sklearn:")
        if name not in SKLEARN_DATASETS:
            raise ValueError(f"unknown dataset {data!r}; scikit-learn ships {SKLEARN_DATASETS}")
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{name}")(as_frame=True)
        frame = bunch.frame.copy()
        if "target_names" in bunch:
            frame["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
        digest = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
        return frame, label_column or "target", f"scikit-learn load_{name}()", digest
    path = Path(data)
    frame = pd.read_csv(path)
    if label_column is None:
        raise ValueError("a CSV needs --label-column")
    return frame, label_column, path.name, file_sha256(path)


def column_dtype(series: pd.Series) -> str:
    """The dtype a column is declared with in a bundle: float64, int64, bool or string."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int64"
    if pd.api.types.is_numeric_dtype(series):
        return "float64"
    return "string"


@dataclass(frozen=True)
class TabularSplit:
    """Feature columns, train and test rows, targets, and where they came from."""

    columns: list[Column]
    categorical: list[str]
    label_column: str
    labels: list[str]
    x_train: pd.DataFrame
    y_train: np.ndarray
    x_test: pd.DataFrame
    y_test: np.ndarray
    source: str
    source_sha256: str
    rows: int

    @property
    def names(self) -> list[str]:
        """Feature column names, in order."""
        return [column.name for column in self.columns]


def load_tabular_split(
    data: str,
    task: str,
    label_column: str | None = None,
    feature_columns: list[str] | None = None,
    categorical: list[str] | None = None,
    test_size: float = 0.2,
    seed: int = 42,
) -> TabularSplit:
    """Read the table, pick its features (default: every other column) and split it.

    Classification targets become label strings and the split is stratified; regression targets
    become floats. Columns of text dtype are categorical unless named otherwise.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    frame, label, source, digest = read_table(data, label_column)
    if label not in frame.columns:
        raise ValueError(f"{source} has no column {label!r}: {list(frame.columns)}")
    frame = frame.dropna(subset=[label])
    names = feature_columns or [name for name in frame.columns if name != label]
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise ValueError(f"{source} has no column(s) {missing}")
    columns = [Column(name=name, dtype=column_dtype(frame[name])) for name in names]
    detected = [column.name for column in columns if column.dtype == "string"]
    chosen = list(dict.fromkeys([*(categorical or []), *detected]))
    features = frame[names]
    if task == "classification":
        target = frame[label].astype(str).to_numpy()
        labels = sorted(set(target))
        y = np.searchsorted(labels, target)
        stratify = y
    else:
        y = frame[label].astype(float).to_numpy()
        labels, stratify = [], None
    x_train, x_test, y_train, y_test = train_test_split(
        features, y, test_size=test_size, random_state=seed, stratify=stratify
    )
    return TabularSplit(
        columns=columns,
        categorical=chosen,
        label_column=label,
        labels=labels,
        x_train=x_train.reset_index(drop=True),
        y_train=y_train,
        x_test=x_test.reset_index(drop=True),
        y_test=y_test,
        source=source,
        source_sha256=digest,
        rows=len(frame),
    )
