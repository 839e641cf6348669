"""Turn a clear scikit-learn model (the api-inference-community layout: config.json plus skops,
or pickle where the operator allows it) into an encrypted tabular bundle.

The final estimator becomes a Concrete-ML model through `from_sklearn_model`, quantized on the
calibration rows; the steps of a Pipeline before it become the bundle's client-side
preprocessing. The card reports how closely the encrypted model follows the clear one on those
rows. Run `python -m fhe.build.convert --help`.
"""

from __future__ import annotations

import copy
import json
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from fhe.build.tabular_bundle import Measured, TabularModel, write_description, write_tabular_bundle
from fhe.build.tabular_data import column_dtype
from fhe.contract.bundle import Conversion
from fhe.contract.digest import file_sha256
from fhe.contract.outputs import missing_columns
from fhe.contract.sklearn_files import ModelLoadRefused, ModelPolicy, load_estimator

console = Console(stderr=True)

SUPPORTED = {
    "sklearn.linear_model._base.LinearRegression": "LinearRegression",
    "sklearn.linear_model._logistic.LogisticRegression": "LogisticRegression",
    "sklearn.linear_model._ridge.Ridge": "Ridge",
    "sklearn.linear_model._coordinate_descent.Lasso": "Lasso",
    "sklearn.linear_model._coordinate_descent.ElasticNet": "ElasticNet",
    "sklearn.svm._classes.LinearSVC": "LinearSVC",
    "sklearn.svm._classes.LinearSVR": "LinearSVR",
    "sklearn.tree._classes.DecisionTreeClassifier": "DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor": "DecisionTreeRegressor",
    "sklearn.ensemble._forest.RandomForestClassifier": "RandomForestClassifier",
    "sklearn.ensemble._forest.RandomForestRegressor": "RandomForestRegressor",
    "xgboost.sklearn.XGBClassifier": "XGBClassifier",
    "xgboost.sklearn.XGBRegressor": "XGBRegressor",
}
"""scikit-learn (and XGBoost) estimators Concrete-ML's `from_sklearn_model` converts, by their
full class name, to the Concrete-ML class of the same name."""

LINEAR_N_BITS = 8
TREE_N_BITS = 6
"""Default quantization: linear models keep 8 bits at no PBS cost; trees pay a PBS per node and
bit, so they default to 6."""


class ConversionRefused(ValueError):
    """The clear model cannot become an encrypted one; the message says why and what can."""


def _full_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def supported_list() -> str:
    """The supported estimators, for refusals."""
    return ", ".join(sorted(set(SUPPORTED.values())))


@dataclass(frozen=True)
class ClearSource:
    """A clear model directory: its config, its model file and the loaded estimator."""

    path: Path
    model_file: Path
    task: str | None
    columns: list[str] | None
    estimator: Any


def read_clear_model(path: Path, policy: ModelPolicy) -> ClearSource:
    """Load a clear model directory with the server's audit; pickle only when `policy` allows."""
    config: dict[str, Any] = {}
    config_path = path / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text()).get("sklearn", {})
        except (ValueError, AttributeError) as error:
            raise ConversionRefused(f"{config_path} is not valid: {error}") from None
    file = path / config.get("model", {}).get("file", "sklearn_model.joblib")
    if not file.resolve().is_relative_to(path.resolve()) or not file.is_file():
        raise ConversionRefused(f"{path} holds no model file ({file.name})")
    try:
        estimator = load_estimator(file, config.get("model_format", "pickle"), policy)
    except ModelLoadRefused as error:
        raise ConversionRefused(f"{file.name} was not loaded: {error}") from None
    return ClearSource(path, file, config.get("task"), config.get("columns"), estimator)


def split_pipeline(estimator: Any) -> tuple[Any | None, Any]:
    """(preprocessing, final estimator): a Pipeline's leading steps and its last one.

    Refused unless the final estimator is supported and the preprocessing is a transformer that
    clients can load through the skops audit.
    """
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        steps = estimator.steps
        final = steps[-1][1]
        preprocessing = (
            None if len(steps) == 1 else steps[0][1] if len(steps) == 2 else Pipeline(steps[:-1])
        )
    else:
        preprocessing, final = None, estimator
    if _full_name(final) not in SUPPORTED:
        raise ConversionRefused(
            f"{type(final).__name__} ({_full_name(final)}) cannot be converted to an encrypted "
            f"model; supported estimators: {supported_list()}"
        )
    if preprocessing is not None:
        _check_preprocessing(preprocessing)
    return preprocessing, final


def _check_preprocessing(preprocessing: Any) -> None:
    """Refuse preprocessing that is not a tabular transformer clients can audit and load."""
    import skops.io as sio
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer

    from fhe.contract.preprocessing import load_preprocessing

    steps = getattr(preprocessing, "steps", [(None, preprocessing)])
    vectorizers = [
        type(step).__name__
        for _, step in steps
        if isinstance(step, CountVectorizer | HashingVectorizer)
    ]
    if vectorizers:
        raise ConversionRefused(
            f"the pipeline feeds text through a vectorizer ({', '.join(vectorizers)}): encrypted "
            "bundles converted from clear models take table rows, through supported estimators "
            f"({supported_list()}) after tabular preprocessing; train a text model with "
            "`python -m fhe.build.recipe` instead"
        )
    if not hasattr(preprocessing, "transform"):
        raise ConversionRefused(
            f"the pipeline's preprocessing {type(preprocessing).__name__} is not a transformer "
            "(it has no transform method)"
        )
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "preprocessing.skops"
        try:
            sio.dump(preprocessing, path)
            load_preprocessing(path)
        except ModelLoadRefused as error:
            raise ConversionRefused(
                f"the pipeline's preprocessing cannot be audited by clients: {error}"
            ) from None
        except Exception as error:  # skops raises many kinds on objects it cannot save
            raise ConversionRefused(
                f"the pipeline's preprocessing cannot be saved with skops: "
                f"{type(error).__name__}: {error}"
            ) from None


def concrete_model(final: Any, features: np.ndarray, n_bits: int | None) -> tuple[Any, int]:
    """The Concrete-ML twin of a fitted estimator, quantized on the calibration features."""
    from concrete.ml import sklearn as cml

    name = SUPPORTED[_full_name(final)]
    linear = not name.startswith(("Decision", "Random", "XGB"))
    bits = n_bits or (LINEAR_N_BITS if linear else TREE_N_BITS)
    classes = getattr(final, "classes_", None)
    if not linear and classes is not None and classes.dtype.kind not in "iu":
        # Concrete-ML's tree conversion takes integer classes; positions are what the trees hold.
        final = copy.deepcopy(final)
        final.classes_ = np.arange(len(classes))
    return getattr(cml, name).from_sklearn_model(final, features, n_bits=bits), bits


def convert(
    source_dir: Path,
    calibration: Path,
    out: Path,
    name: str | None = None,
    n_bits: int | None = None,
    policy: ModelPolicy | None = None,
    p_error: float | None = 1e-6,
    fhe_sample: int = 20,
    command: str = "",
) -> Measured:
    """Convert the clear model in `source_dir`, calibrated and measured on `calibration` rows."""
    from sklearn.base import is_classifier

    source = read_clear_model(source_dir, policy or ModelPolicy())
    preprocessing, final = split_pipeline(source.estimator)
    rows = pd.read_csv(calibration)
    columns = source.columns or list(getattr(source.estimator, "feature_names_in_", []))
    if not columns:
        raise ConversionRefused("config.json names no columns and the model records none")
    missing = [column for column in columns if column not in rows.columns]
    if missing:
        raise ConversionRefused(f"{missing_columns(set(missing))} (in {calibration.name})")
    rows = rows[columns].reset_index(drop=True)
    classifies = is_classifier(final)
    task = "tabular-classification" if classifies else "tabular-regression"
    if source.task and source.task != task:
        raise ConversionRefused(f"config.json says {source.task}, the estimator does {task}")
    features = (
        np.asarray(preprocessing.transform(rows), dtype=np.float64)
        if preprocessing is not None
        else rows.to_numpy(dtype=np.float64)
    )
    model, bits = concrete_model(final, features, n_bits)
    clear = source.estimator.predict(rows)
    classes = np.asarray(getattr(final, "classes_", []))
    labels = [str(label) for label in classes]
    truth = (
        np.searchsorted(classes, np.asarray(clear))
        if classifies
        else np.asarray(clear, dtype=np.float64).reshape(len(rows), -1)[:, 0]
    )
    tabular = TabularModel(
        model=model,
        preprocessing=preprocessing,
        columns=[_column(rows, column) for column in columns],
        categorical=[column for column in columns if column_dtype(rows[column]) == "string"],
        task=task,
        labels=labels,
        params={"n_bits": bits},
        p_error=p_error,
    )
    name = name or out.name
    description = (
        f"The clear model `{source_dir.name}` ({type(final).__name__}) converted to run over "
        "encrypted rows."
    )
    console.log(f"converting {type(final).__name__} with n_bits={bits} on {len(rows)} rows")
    measured = write_tabular_bundle(tabular, out, name, description, rows, rows, truth, fhe_sample)
    sample = len(measured.fhe_sample)
    if classifies:
        agreement = float(np.mean(measured.simulated == truth))
        fhe_agreement = float(np.mean(measured.fhe_sample == truth[:sample]))
        largest = mean = None
    else:
        differences = np.abs(measured.simulated - truth)
        agreement = fhe_agreement = None
        largest, mean = float(differences.max()), float(differences.mean())
    steps = [name for name, _ in getattr(source.estimator, "steps", [])[:-1]]
    conversion = Conversion(
        source=source_dir.name,
        source_file=source.model_file.name,
        source_sha256=file_sha256(source.model_file),
        estimator=_full_name(final),
        pipeline_steps=steps,
        calibration=calibration.name,
        calibration_sha256=file_sha256(calibration),
        calibration_rows=len(rows),
        agreement=agreement,
        fhe_sample_agreement=fhe_agreement,
        max_abs_difference=largest,
        mean_abs_difference=mean,
        command=command,
    )
    metadata = measured.metadata.model_copy(update={"conversion": conversion})
    write_description(out, metadata)
    console.log(f"bundle written to {out}")
    return Measured(metadata, measured.quantized, measured.simulated, measured.fhe_sample)


def _column(rows: pd.DataFrame, name: str) -> Any:
    from fhe.contract.bundle import Column

    return Column(name=name, dtype=column_dtype(rows[name]))


def main(argv: list[str] | None = None) -> None:
    """Command line: python -m fhe.build.convert CLEAR_DIR --calibration rows.csv --out DIR."""
    import typer

    app = typer.Typer(add_completion=False)

    @app.command()
    def run(
        source: Path = typer.Argument(..., help="clear model directory (config.json + model)"),
        calibration: Path = typer.Option(..., help="CSV of representative rows, with a header"),
        out: Path = typer.Option(..., help="bundle directory to write"),
        name: str = typer.Option("", help="model name (default: the --out directory's name)"),
        n_bits: int = typer.Option(
            0, help=f"quantization bits (0: {LINEAR_N_BITS} for linear, {TREE_N_BITS} for trees)"
        ),
        allow_pickle: bool = typer.Option(
            False, help="load a pickle or joblib model file (it runs code: only one you trust)"
        ),
        trusted_types: str = typer.Option(
            "", help="comma-separated skops types to trust beyond the audit's defaults"
        ),
        p_error: float = typer.Option(1e-6, help="error probability of one PBS (0: default)"),
        fhe_sample: int = typer.Option(20, help="calibration rows run under real FHE"),
    ) -> None:
        policy = ModelPolicy(
            allow_pickle=allow_pickle,
            trusted_types=[part for part in trusted_types.split(",") if part],
            allow_pickle_hint="pass --allow-pickle if you trust this file",
            trust_hint="pass --trusted-types with them if you trust this file",
            trust_all_hint="pass --trusted-types '*' if you trust this file",
        )
        try:
            convert(
                source,
                calibration,
                out,
                name=name or None,
                n_bits=n_bits or None,
                policy=policy,
                p_error=p_error or None,
                fhe_sample=fhe_sample,
                command="python -m fhe.build.convert " + shlex.join(argv or sys.argv[1:]),
            )
        except ConversionRefused as error:
            console.print(f"[red]refused:[/red] {error}")
            raise typer.Exit(2) from None

    app(argv)


if __name__ == "__main__":
    main()
