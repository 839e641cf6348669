"""Building the client-side step of a tabular bundle: a scikit-learn transformer from a row to
the circuit's features, saved with skops and, where plain parameters describe it, as JSON that
clients apply without scikit-learn (fhe.contract.preprocessing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhe.contract.bundle import PLAIN_PREPROCESSING_FILE, PREPROCESSING_FILE, Preprocessing
from fhe.contract.digest import file_sha256
from fhe.contract.preprocessing import (
    Impute,
    OneHot,
    Part,
    PlainPreprocessing,
    Scale,
    load_preprocessing,
)
from fhe.contract.sklearn_files import ModelLoadRefused


def build_preprocessing(numeric: list[str], categorical: list[str], sparse: list[str]) -> Any:
    """Scale numeric columns and one-hot categorical ones (unknown categories: all zeros).

    Only the columns in `sparse` (those with missing values in the training data) get an imputer
    first: a column that was always there is required, rather than silently filled in.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    def part(label: str, columns: list[str], imputer: Any, final: Any) -> tuple | None:
        if not columns:
            return None
        steps = [("impute", imputer)] if label.endswith("imputed") else []
        return (label, Pipeline([*steps, (label.split("-")[0], final)]), columns)

    onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    parts = [
        part("scaled", [c for c in numeric if c not in sparse], None, StandardScaler()),
        part(
            "scaled-imputed",
            [c for c in numeric if c in sparse],
            SimpleImputer(strategy="median"),
            StandardScaler(),
        ),
        part("onehot", [c for c in categorical if c not in sparse], None, onehot),
        part(
            "onehot-imputed",
            [c for c in categorical if c in sparse],
            SimpleImputer(strategy="most_frequent"),
            onehot,
        ),
    ]
    return ColumnTransformer(
        [p for p in parts if p is not None], remainder="drop", sparse_threshold=0.0
    )


def step_names(transformer: Any) -> list[str]:
    """The steps as people read them, e.g. `numeric (3 columns): SimpleImputer, StandardScaler`."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if isinstance(transformer, Pipeline):
        return [name for _, step in transformer.steps for name in step_names(step)]
    if isinstance(transformer, ColumnTransformer):
        found = []
        for label, part, columns in transformer.transformers:
            if part in ("drop", "passthrough"):
                continue
            inner = ", ".join(step_names(part))
            found.append(f"{label} ({len(columns)} columns): {inner}")
        return found
    return [type(transformer).__name__]


def imputed_columns(transformer: Any, columns: list[str]) -> list[str]:
    """The columns the transformer fills in when they are missing (NaN) from a row."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    if isinstance(transformer, SimpleImputer):
        return list(columns)
    if isinstance(transformer, Pipeline) and transformer.steps:
        return imputed_columns(transformer.steps[0][1], columns)
    if isinstance(transformer, ColumnTransformer):
        found: list[str] = []
        for _, part, names in transformer.transformers:
            if part in ("drop", "passthrough"):
                continue
            found += imputed_columns(part, [columns[n] if isinstance(n, int) else n for n in names])
        return [name for name in columns if name in found]
    return []


class NotPlain(ValueError):
    """A transformer step that plain parameters do not describe."""


def _step(step: Any, width: int) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

    if isinstance(step, SimpleImputer):
        if step.add_indicator or not (
            isinstance(step.missing_values, float) and np.isnan(step.missing_values)
        ):
            raise NotPlain("an imputer with indicators or another missing value")
        values = [None if _nan(value) else _scalar(value) for value in step.statistics_]
        return Impute(values=values)
    if isinstance(step, StandardScaler):
        offset = step.mean_ if step.with_mean else np.zeros(width)
        scale = step.scale_ if step.with_std else np.ones(width)
        return Scale(offset=[float(v) for v in offset], scale=[float(v) for v in scale])
    if isinstance(step, MinMaxScaler):
        if step.clip:
            raise NotPlain("a clipping MinMaxScaler")
        # x * scale_ + min_ = (x - (-min_ / scale_)) / (1 / scale_)
        return Scale(
            offset=[float(-m / s) for m, s in zip(step.min_, step.scale_, strict=True)],
            scale=[float(1 / s) for s in step.scale_],
        )
    if isinstance(step, OneHotEncoder):
        if step.drop is not None or step.handle_unknown != "ignore":
            raise NotPlain("a one-hot encoder that drops categories or refuses unknown ones")
        if getattr(step, "min_frequency", None) or getattr(step, "max_categories", None):
            raise NotPlain("a one-hot encoder grouping infrequent categories")
        return OneHot(
            categories=[[_scalar(value) for value in known] for known in step.categories_]
        )
    raise NotPlain(type(step).__name__)


def _nan(value: Any) -> bool:
    return isinstance(value, float | np.floating) and bool(np.isnan(value))


def _scalar(value: Any) -> float | str:
    return value if isinstance(value, str) else float(value)


def _parts(transformer: Any, columns: list[str]) -> list[Part]:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if isinstance(transformer, ColumnTransformer):
        if transformer.remainder != "drop":
            raise NotPlain("a column transformer that keeps the remaining columns")
        parts: list[Part] = []
        for _, part, names in transformer.transformers_:
            if part == "drop" or (not isinstance(names, str) and len(names) == 0):
                continue
            if isinstance(names, str) or part == "passthrough":
                raise NotPlain("columns passed through or named by one string")
            named = [columns[n] if isinstance(n, int | np.integer) else str(n) for n in names]
            parts += _parts(part, named)
        return parts
    steps = transformer.steps if isinstance(transformer, Pipeline) else [(None, transformer)]
    return [Part(columns=columns, steps=[_step(step, len(columns)) for _, step in steps])]


def plain_preprocessing(transformer: Any, columns: list[str]) -> PlainPreprocessing:
    """The fitted transformer as plain parameters; NotPlain names a step they do not describe."""
    return PlainPreprocessing(parts=_parts(transformer, columns))


def _plain_equal(transformer: Any, plain: PlainPreprocessing, rows: Any) -> bool:
    """Whether the plain parameters give the transformer's features on every row (1e-9)."""
    expected = np.asarray(transformer.transform(rows), dtype=np.float64)
    found = np.vstack([plain.transform(row) for row in rows.to_dict(orient="records")])
    return expected.shape == found.shape and bool(np.allclose(expected, found, atol=1e-9))


def save_preprocessing(
    transformer: Any, bundle_dir: Path, columns: list[str], rows: Any | None = None
) -> Preprocessing:
    """Write the transformer as skops and describe it; refused unless the client audit passes it.

    Where plain parameters describe it and give its features on `rows` (a DataFrame of the
    columns), they are written too, for clients without scikit-learn.
    """
    import skops.io as sio

    path = bundle_dir / PREPROCESSING_FILE
    sio.dump(transformer, path)
    try:
        load_preprocessing(path)
    except ModelLoadRefused as error:
        path.unlink()
        raise ModelLoadRefused(f"the preprocessing cannot be audited by clients: {error}") from None
    plain = write_plain(transformer, bundle_dir, columns, rows)
    return Preprocessing(
        sha256=file_sha256(path),
        bytes=path.stat().st_size,
        steps=step_names(transformer),
        imputes=imputed_columns(transformer, columns),
        **plain,
    )


def write_plain(
    transformer: Any, bundle_dir: Path, columns: list[str], rows: Any | None
) -> dict[str, Any]:
    """Write `preprocessing.json` where plain parameters describe the transformer and give its
    features on `rows`; the fields that describe it in the card (empty when not written)."""
    plain_path = bundle_dir / PLAIN_PREPROCESSING_FILE
    plain_path.unlink(missing_ok=True)
    try:
        plain = plain_preprocessing(transformer, columns)
    except NotPlain:
        return {}
    if rows is not None and not _plain_equal(transformer, plain, rows):
        return {}
    plain.save(plain_path)
    return {
        "plain_file": PLAIN_PREPROCESSING_FILE,
        "plain_sha256": file_sha256(plain_path),
        "plain_bytes": plain_path.stat().st_size,
    }


def add_plain_to_bundle(bundle_dir: Path, data: str) -> Preprocessing:
    """Write the plain parameters of a tabular bundle built before they existed, checked against
    its skops preprocessing on every row of `data` (a CSV or `sklearn:<name>`)."""
    from fhe.build.tabular_card import render_tabular_card
    from fhe.build.tabular_data import load_tabular_split
    from fhe.contract.bundle import CARD_FILE, TabularInput, read_metadata, write_metadata

    metadata = read_metadata(bundle_dir)
    info = metadata.input
    if not isinstance(info, TabularInput) or info.preprocessing is None:
        raise ValueError(f"{bundle_dir} has no client-side preprocessing")
    transformer = load_preprocessing(bundle_dir / info.preprocessing.file)
    task = "regression" if metadata.task.endswith("regression") else "classification"
    split = load_tabular_split(data, task, feature_columns=info.names)
    rows = pd.concat([split.x_train, split.x_test])[info.names]
    plain = write_plain(transformer, bundle_dir, info.names, rows)
    if not plain:
        raise NotPlain(f"plain parameters do not give {', '.join(info.preprocessing.steps)}")
    described = info.preprocessing.model_copy(update=plain)
    info.preprocessing = described
    write_metadata(bundle_dir, metadata)
    (bundle_dir / CARD_FILE).write_text(render_tabular_card(metadata))
    return described


if __name__ == "__main__":
    import sys

    for bundle, source in zip(sys.argv[1::2], sys.argv[2::2], strict=True):
        added = add_plain_to_bundle(Path(bundle), source)
        print(f"{bundle}: {added.plain_file} ({added.plain_bytes:,} bytes)")
