"""Writing a tabular bundle: export a fitted Concrete-ML model, its client-side preprocessing and
its columns, measure it in the clear, in simulation and in real FHE, and write model.json and the
card from those measurements. The tabular recipe and the converter both end here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score

from fhe.build.circuit import circuit_cost, compile_model, export_circuit, measure_real_fhe
from fhe.build.preprocessing import save_preprocessing
from fhe.build.tabular_card import render_tabular_card
from fhe.contract.bundle import (
    CARD_FILE,
    PLAIN_PREPROCESSING_FILE,
    PREPROCESSING_FILE,
    BundleMetadata,
    CircuitInfo,
    Column,
    TabularInput,
    TabularMetrics,
    TabularTrainingInfo,
    write_metadata,
)
from fhe.contract.outputs import top_classes


@dataclass(frozen=True)
class TabularModel:
    """A fitted Concrete-ML model with what turns a row into its features.

    `task` is `tabular-classification` or `tabular-regression`; `labels` name the classes in the
    order of the model's outputs.
    """

    model: Any
    preprocessing: Any | None
    columns: list[Column]
    categorical: list[str]
    task: str
    labels: list[str]
    params: dict[str, Any]
    p_error: float | None
    float_twin: bool = True
    """False when the model's float estimator was fit on quantized inputs (the recipe's trees):
    it then has no unquantized counterpart to compare with."""

    @property
    def names(self) -> list[str]:
        """Feature column names, in order."""
        return [column.name for column in self.columns]

    def features(self, rows: pd.DataFrame) -> np.ndarray:
        """The circuit's float input for rows: the preprocessing's output, or the columns as is."""
        frame = rows[self.names]
        if self.preprocessing is None:
            return frame.to_numpy(dtype=np.float64)
        return np.asarray(self.preprocessing.transform(frame), dtype=np.float64)

    @property
    def classifies(self) -> bool:
        """True for a classifier."""
        return self.task == "tabular-classification"


def example_row(rows: pd.DataFrame) -> dict[str, Any]:
    """The first row as JSON-ready values, shown by the card and prefilled in the demo."""
    first = rows.iloc[0].to_dict()
    return {
        key: (None if pd.isna(value) else value.item() if hasattr(value, "item") else value)
        for key, value in first.items()
    }


def scores(task: str, truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro F1 of labels, or R² and MAE of values."""
    if task == "tabular-classification":
        return {
            "accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, average="macro")),
        }
    return {
        "r2": float(r2_score(truth, predicted)),
        "mae": float(mean_absolute_error(truth, predicted)),
    }


def _outputs(tabular: TabularModel, raw: np.ndarray) -> np.ndarray:
    """Class positions of probabilities, or the values of a regression."""
    raw = np.asarray(raw)
    if tabular.classifies:
        return top_classes(raw)
    return raw.reshape(len(raw), -1)[:, 0]


@dataclass(frozen=True)
class Measured:
    """What a written bundle predicted on the held-out rows (quantized clear and simulated)."""

    metadata: BundleMetadata
    quantized: np.ndarray
    simulated: np.ndarray
    fhe_sample: np.ndarray


def write_tabular_bundle(
    tabular: TabularModel,
    out: Path,
    name: str,
    description: str,
    x_train: pd.DataFrame,
    x_test: pd.DataFrame,
    y_test: np.ndarray,
    fhe_sample: int,
    training: TabularTrainingInfo | None = None,
    clear_twin: str | None = None,
) -> Measured:
    """Compile, export, measure and describe one tabular model as a bundle in `out`."""
    started = time.perf_counter()
    circuit = compile_model(tabular.model, tabular.features(x_train), tabular.p_error)
    compile_seconds = time.perf_counter() - started
    pbs, bits = circuit_cost(circuit)
    features = tabular.features(x_test)
    unquantized = _float_predictions(tabular, features) if tabular.float_twin else None
    quantized = _outputs(tabular, _circuit_outputs(tabular, features, "disable"))
    simulated = _outputs(tabular, _circuit_outputs(tabular, features, "simulate"))

    out.mkdir(parents=True, exist_ok=True)
    spec_hash = export_circuit(tabular.model, out)
    (out / PREPROCESSING_FILE).unlink(missing_ok=True)
    (out / PLAIN_PREPROCESSING_FILE).unlink(missing_ok=True)
    rows = pd.concat([x_train, x_test])[tabular.names]
    preprocessing = (
        save_preprocessing(tabular.preprocessing, out, tabular.names, rows)
        if tabular.preprocessing is not None
        else None
    )
    sample = min(fhe_sample, len(features))
    real = measure_real_fhe(out, features[:sample])
    fhe_values = _outputs(tabular, real.outputs)
    twin_agreement = quantization_error = None
    if tabular.classifies:
        agreement = float(np.mean(fhe_values == simulated[:sample]))
        if unquantized is not None:
            twin_agreement = float(np.mean(simulated == unquantized))
    else:
        agreement = float(np.mean(np.isclose(fhe_values, simulated[:sample], rtol=1e-6)))
        if unquantized is not None:
            quantization_error = float(np.max(np.abs(quantized - unquantized)))
    metrics = TabularMetrics(
        rows=len(features),
        unquantized=None if unquantized is None else scores(tabular.task, y_test, unquantized),
        quantized=scores(tabular.task, y_test, quantized),
        simulated=scores(tabular.task, y_test, simulated),
        fhe_sample=scores(tabular.task, y_test[:sample], fhe_values),
        fhe_sample_agreement_with_simulation=agreement,
        agreement_with_unquantized=twin_agreement,
        max_quantization_error=quantization_error,
        **real.timings(compile_seconds),
    )
    metadata = BundleMetadata(
        name=name,
        task=tabular.task,
        labels=tabular.labels,
        description=description,
        input=TabularInput(
            columns=tabular.columns,
            categorical=tabular.categorical,
            preprocessing=preprocessing,
            features=int(features.shape[1]),
            example=example_row(x_test[tabular.names]),
        ),
        circuit=CircuitInfo(
            model_type=type(tabular.model).__name__,
            params=tabular.params,
            pbs_count=pbs,
            max_bit_width=bits,
            p_error=tabular.p_error,
        ),
        training=training,
        metrics=metrics,
        clear_twin=clear_twin,
        client_spec_sha256=spec_hash,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_description(out, metadata)
    return Measured(metadata, quantized, simulated, fhe_values)


def write_description(out: Path, metadata: BundleMetadata) -> None:
    """Write model.json and the card rendered from it."""
    write_metadata(out, metadata)
    (out / CARD_FILE).write_text(render_tabular_card(metadata))


def _circuit_outputs(tabular: TabularModel, features: np.ndarray, fhe: str) -> np.ndarray:
    """What the circuit outputs, quantized in the clear or simulated: class probabilities (what
    clients decrypt and take the top class of), or values."""
    if tabular.classifies:
        return tabular.model.predict_proba(features, fhe=fhe)
    return tabular.model.predict(features, fhe=fhe)


def _float_predictions(tabular: TabularModel, features: np.ndarray) -> np.ndarray:
    """The unquantized model's class positions (classes_ is sorted) or values."""
    float_model = tabular.model.sklearn_model
    predicted = np.asarray(float_model.predict(features))
    if tabular.classifies:
        return np.searchsorted(np.asarray(float_model.classes_), predicted)
    return predicted.reshape(len(predicted), -1)[:, 0]
