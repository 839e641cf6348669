"""The client-side step of a tabular bundle: a scikit-learn transformer from a row to the
circuit's features, saved with skops and loaded through the same audit as clear models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fhe.bundle import PREPROCESSING_FILE, Preprocessing
from fhe.digest import file_sha256
from fhe.sklearn_files import ModelLoadRefused, ModelPolicy, load_estimator


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


def save_preprocessing(transformer: Any, bundle_dir: Path, columns: list[str]) -> Preprocessing:
    """Write the transformer as skops and describe it; refused unless the client audit passes it."""
    import skops.io as sio

    path = bundle_dir / PREPROCESSING_FILE
    sio.dump(transformer, path)
    try:
        load_preprocessing(path)
    except ModelLoadRefused as error:
        path.unlink()
        raise ModelLoadRefused(f"the preprocessing cannot be audited by clients: {error}") from None
    return Preprocessing(
        sha256=file_sha256(path),
        bytes=path.stat().st_size,
        steps=step_names(transformer),
        imputes=imputed_columns(transformer, columns),
    )


def load_preprocessing(path: Path) -> Any:
    """Load a bundle's preprocessing on the client: skops only, default audit, nothing extra."""
    hint = "clients trust only the audit's defaults, and a bundle cannot widen them"
    policy = ModelPolicy(allow_pickle_hint=hint, trust_hint=hint, trust_all_hint=hint)
    return load_estimator(path, "skops", policy)
