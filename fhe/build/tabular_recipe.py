"""The tabular training recipe: from any CSV (or a dataset scikit-learn ships), fit the client-side
preprocessing, grid-search Concrete-ML XGBoost and linear models under a PBS budget, compile,
measure clear, simulated and real FHE, and write the bundle, its card and its clear twin.

Run `python -m fhe.build.tabular_recipe --help`; `make tabular-models` rebuilds the shipped
examples.
"""

from __future__ import annotations

import dataclasses
import itertools
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

from fhe.build.circuit import circuit_cost, compile_model
from fhe.build.clear_twin import write_clear_twin
from fhe.build.preprocessing import build_preprocessing
from fhe.build.tabular_bundle import Measured, TabularModel, write_tabular_bundle
from fhe.build.tabular_data import SKLEARN_LICENSE, TabularSplit, load_tabular_split
from fhe.contract.bundle import TabularTrainingInfo

console = Console(stderr=True)

MODEL_TYPES = ("xgb", "linear")


@dataclass
class TabularRecipeConfig:
    """Every knob of one tabular training run."""

    out: Path
    name: str
    data: str
    task: str = "classification"
    label_column: str | None = None
    feature_columns: list[str] | None = None
    categorical: list[str] | None = None
    data_license: str = ""
    description: str = ""
    model_types: list[str] = field(default_factory=lambda: list(MODEL_TYPES))
    n_bits: list[int] = field(default_factory=lambda: [2, 3, 4])
    linear_n_bits: list[int] = field(default_factory=lambda: [6, 8])
    max_depth: list[int] = field(default_factory=lambda: [2, 3])
    n_estimators: list[int] = field(default_factory=lambda: [5, 10, 20])
    max_pbs: int = 300
    p_errors: list[float | None] = field(default_factory=lambda: [1e-6])
    cv_folds: int = 3
    test_size: float = 0.2
    seed: int = 42
    fhe_sample: int = 50
    clear_twin: Path | None = None
    command: str = ""


def grid_points(config: TabularRecipeConfig) -> list[tuple[str, dict[str, int]]]:
    """The (model type, parameters) settings to try."""
    points: list[tuple[str, dict[str, int]]] = []
    for model_type in config.model_types:
        if model_type == "linear":
            points += [("linear", {"n_bits": n_bits}) for n_bits in config.linear_n_bits]
        elif model_type == "xgb":
            points += [
                ("xgb", {"n_bits": n_bits, "max_depth": depth, "n_estimators": trees})
                for n_bits, depth, trees in itertools.product(
                    config.n_bits, config.max_depth, config.n_estimators
                )
            ]
        else:
            raise ValueError(f"model type must be one of {MODEL_TYPES}, not {model_type!r}")
    return points


def make_model(task: str, model_type: str, params: dict[str, int], seed: int) -> Any:
    """An untrained Concrete-ML model for the task."""
    from concrete.ml import sklearn as cml

    if task == "classification":
        if model_type == "linear":
            return cml.LogisticRegression(**params, max_iter=2000, random_state=seed)
        return cml.XGBClassifier(**params, random_state=seed, n_jobs=2)
    if model_type == "linear":
        return cml.Ridge(**params, random_state=seed)
    return cml.XGBRegressor(**params, random_state=seed, n_jobs=2)


def cv_score(
    config: TabularRecipeConfig,
    model_type: str,
    params: dict[str, int],
    p_error: float | None,
    folds: KFold | StratifiedKFold,
    x_train: np.ndarray,
    y_train: np.ndarray,
) -> float:
    """Mean cross-validated accuracy or R² of one setting.

    With one p_error searched this is the clear quantized model's score (which FHE reproduces up
    to that error rate, the same for every setting); with several, each fold's model is compiled
    at `p_error` and scored under FHE simulation, so a larger error rate costs what it costs.
    """
    classify = config.task == "classification"
    if len(config.p_errors) < 2:
        model = make_model(config.task, model_type, params, config.seed)
        scoring = "accuracy" if classify else "r2"
        return float(cross_val_score(model, x_train, y_train, cv=folds, scoring=scoring).mean())
    scores = []
    for fit_rows, scored_rows in folds.split(x_train, y_train):
        model = make_model(config.task, model_type, params, config.seed)
        model.fit(x_train[fit_rows], y_train[fit_rows])
        compile_model(model, x_train[fit_rows], p_error)
        predicted = model.predict(x_train[scored_rows], fhe="simulate")
        metric = accuracy_score if classify else r2_score
        scores.append(metric(y_train[scored_rows], predicted))
    return float(np.mean(scores))


def search_grid(
    config: TabularRecipeConfig, x_train: np.ndarray, y_train: np.ndarray
) -> tuple[Any, str, dict[str, int], float | None, list[dict[str, Any]]]:
    """Cross-validate each setting and error rate (accuracy or R²), compile it for its PBS count,
    keep the best within the budget: (model, type, parameters, p_error, every row).

    Error rates are tried from the largest (the fastest circuit), so a tie keeps the faster one;
    a linear circuit has no PBS, so it is tried once, at the first rate given.
    """
    classify = config.task == "classification"
    folds = (
        StratifiedKFold(config.cv_folds, shuffle=True, random_state=config.seed)
        if classify
        else KFold(config.cv_folds, shuffle=True, random_state=config.seed)
    )
    p_errors = sorted(config.p_errors, key=lambda p: -1.0 if p is None else p, reverse=True)
    rows: list[dict[str, Any]] = []
    best: tuple[float, Any, str, dict[str, int], float | None] | None = None
    for model_type, params in grid_points(config):
        for p_error in config.p_errors[:1] if model_type == "linear" else p_errors:
            started = time.perf_counter()
            score = cv_score(config, model_type, params, p_error, folds, x_train, y_train)
            model = make_model(config.task, model_type, params, config.seed)
            model.fit(x_train, y_train)
            pbs, bits = circuit_cost(compile_model(model, x_train, p_error))
            rows.append(
                {
                    "model_type": model_type,
                    "params": params,
                    "p_error": p_error,
                    "cv_score": score,
                    "pbs_count": pbs,
                    "max_bit_width": bits,
                }
            )
            console.log(
                f"{model_type} {params} p_error {p_error}: CV {'accuracy' if classify else 'R²'} "
                f"{score:.4f}, {pbs} PBS, {bits} bits ({time.perf_counter() - started:.1f} s)"
            )
            if pbs <= config.max_pbs and (best is None or score > best[0]):
                best = (score, model, model_type, params, p_error)
    if best is None:
        cheapest = min(row["pbs_count"] for row in rows)
        raise ValueError(f"no setting fits max_pbs={config.max_pbs}; the cheapest has {cheapest}")
    return best[1], best[2], best[3], best[4], rows


def train_tabular(config: TabularRecipeConfig) -> Measured:
    """Run the whole tabular recipe; write the bundle (and the clear twin if asked)."""
    split: TabularSplit = load_tabular_split(
        config.data,
        config.task,
        label_column=config.label_column,
        feature_columns=config.feature_columns,
        categorical=config.categorical,
        test_size=config.test_size,
        seed=config.seed,
    )
    console.log(
        f"{len(split.x_train)} train and {len(split.x_test)} test rows, {len(split.names)} "
        f"columns ({len(split.categorical)} categorical)"
    )
    numeric = [name for name in split.names if name not in split.categorical]
    sparse = [name for name in split.names if split.x_train[name].isna().any()]
    preprocessing = build_preprocessing(numeric, split.categorical, sparse).fit(split.x_train)
    x_train = np.asarray(preprocessing.transform(split.x_train), dtype=np.float64)
    if config.clear_twin is not None:
        if "linear" not in config.model_types:
            raise ValueError(
                "a clear twin needs a linear model (trees are fit on quantized inputs and have no "
                "unquantized counterpart): add linear to --model-types"
            )
        if config.model_types != ["linear"]:
            console.log("a clear twin needs a linear model: searching the linear models only")
            config = dataclasses.replace(config, model_types=["linear"])
    model, model_type, params, p_error, rows = search_grid(config, x_train, split.y_train)
    task = f"tabular-{config.task}"
    tabular = TabularModel(
        model=model,
        preprocessing=preprocessing,
        columns=split.columns,
        categorical=split.categorical,
        task=task,
        labels=split.labels,
        params={"model": model_type, **params},
        p_error=p_error,
        float_twin=model_type == "linear",
    )
    data_license = config.data_license or (
        SKLEARN_LICENSE if config.data.startswith("sklearn:") else ""
    )
    training = TabularTrainingInfo(
        data=split.source,
        data_sha256=split.source_sha256,
        data_license=data_license,
        label_column=split.label_column,
        rows=split.rows,
        train_rows=len(split.x_train),
        test_rows=len(split.x_test),
        test_size=config.test_size,
        seed=config.seed,
        cv_folds=config.cv_folds,
        grid={
            "model_type": config.model_types,
            "xgb n_bits": config.n_bits,
            "max_depth": config.max_depth,
            "n_estimators": config.n_estimators,
            "linear n_bits": config.linear_n_bits,
            "max_pbs": [config.max_pbs],
            "p_error": config.p_errors,
        },
        cv_results=rows,
        command=config.command,
    )
    twin = config.clear_twin if tabular.float_twin else None
    twin_name = twin.name if twin else None
    description = config.description or (
        f"{task.replace('-', ' ').capitalize()} of `{split.label_column}` from {split.source}, "
        "over encrypted rows."
    )
    measured = write_tabular_bundle(
        tabular,
        config.out,
        config.name,
        description,
        split.x_train,
        split.x_test,
        split.y_test,
        config.fhe_sample,
        training=training,
        clear_twin=twin_name,
    )
    if twin is not None:
        write_clear_twin(twin, tabular, measured.metadata, split.x_test)
    console.log(f"bundle written to {config.out}")
    return measured


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    """Command line: the knobs of TabularRecipeConfig as flags."""
    import typer

    app = typer.Typer(add_completion=False)

    @app.command()
    def run(
        out: Path = typer.Option(..., help="bundle directory to write"),
        name: str = typer.Option(..., help="model name served by fhe-server"),
        data: str = typer.Option(..., help="CSV path, or sklearn:<breast_cancer|diabetes|...>"),
        task: str = typer.Option("classification", help="classification or regression"),
        label_column: str = typer.Option("", help="target column (sklearn: data: `target`)"),
        feature_columns: str = typer.Option("", help="comma-separated (default: all others)"),
        categorical: str = typer.Option("", help="comma-separated (text columns are detected)"),
        data_license: str = typer.Option("", help="licence of the data, for the card"),
        description: str = typer.Option("", help="one sentence for the card"),
        model_types: str = typer.Option("xgb,linear", help="grid: xgb and/or linear"),
        n_bits: str = typer.Option("2,3,4", help="grid: XGBoost quantization bits"),
        linear_n_bits: str = typer.Option("6,8", help="grid: linear model quantization bits"),
        max_depth: str = typer.Option("2,3", help="grid: tree depth"),
        n_estimators: str = typer.Option("5,10,20", help="grid: number of trees"),
        max_pbs: int = typer.Option(300, help="circuit budget in programmable bootstraps"),
        p_error: str = typer.Option(
            "1e-6", help="grid: error probability of one PBS (0: Concrete's default)"
        ),
        cv_folds: int = typer.Option(3, help="cross-validation folds"),
        test_size: float = typer.Option(0.2, help="share of rows held out"),
        seed: int = typer.Option(42),
        fhe_sample: int = typer.Option(50, help="held-out rows run under real FHE"),
        clear_twin: str = typer.Option("", help="also write the unquantized model here (skops)"),
    ) -> None:
        config = TabularRecipeConfig(
            out=out,
            name=name,
            data=data,
            task=task,
            label_column=label_column or None,
            feature_columns=_list(feature_columns) or None,
            categorical=_list(categorical) or None,
            data_license=data_license,
            description=description,
            model_types=_list(model_types),
            n_bits=[int(bits) for bits in _list(n_bits)],
            linear_n_bits=[int(bits) for bits in _list(linear_n_bits)],
            max_depth=[int(depth) for depth in _list(max_depth)],
            n_estimators=[int(trees) for trees in _list(n_estimators)],
            max_pbs=max_pbs,
            p_errors=[float(value) or None for value in _list(p_error)],
            cv_folds=cv_folds,
            test_size=test_size,
            seed=seed,
            fhe_sample=fhe_sample,
            clear_twin=Path(clear_twin) if clear_twin else None,
            command="python -m fhe.build.tabular_recipe " + shlex.join(argv or sys.argv[1:]),
        )
        try:
            train_tabular(config)
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    app(argv)


if __name__ == "__main__":
    main()
