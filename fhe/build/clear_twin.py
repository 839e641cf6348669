"""The clear twin of a tabular bundle: the same preprocessing and the model before quantization,
saved as a skops model in the Hugging Face layout, so the server serves both side by side and
both cards show how closely they agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhe.build.tabular_bundle import TabularModel, example_row
from fhe.contract.bundle import BundleMetadata, TabularMetrics
from fhe.contract.sklearn_files import ModelLoadRefused, ModelPolicy, load_estimator

MODEL_FILE = "model.skops"


def twin_pipeline(tabular: TabularModel) -> Any:
    """Preprocessing then the unquantized estimator; a classifier predicts label names."""
    from sklearn.pipeline import Pipeline

    estimator = tabular.model.sklearn_model
    if tabular.classifies and type(estimator).__module__.startswith("sklearn."):
        estimator.classes_ = np.asarray(tabular.labels)
    steps = [("model", estimator)]
    if tabular.preprocessing is not None:
        steps.insert(0, ("preprocessing", tabular.preprocessing))
    return Pipeline(steps)


def _agreement(metadata: BundleMetadata) -> str:
    metrics = metadata.metrics
    if not isinstance(metrics, TabularMetrics):
        return ""
    if metrics.agreement_with_unquantized is not None:
        return (
            f"The encrypted model gives this model's label on "
            f"{100 * metrics.agreement_with_unquantized:.2f}% of the {metrics.rows} held-out rows."
        )
    return (
        f"The encrypted model's values differ from this model's by at most "
        f"{metrics.max_quantization_error:.4g} on the {metrics.rows} held-out rows."
    )


def write_clear_twin(
    out: Path, tabular: TabularModel, metadata: BundleMetadata, rows: pd.DataFrame
) -> list[str]:
    """Write the twin (skops, config.json, README); return the types an operator must trust
    for it to load (none for scikit-learn estimators)."""
    import sklearn
    import skops.io as sio

    out.mkdir(parents=True, exist_ok=True)
    pipeline = twin_pipeline(tabular)
    path = out / MODEL_FILE
    sio.dump(pipeline, path)
    try:
        load_estimator(path, "skops", ModelPolicy())
        untrusted: list[str] = []
    except ModelLoadRefused:
        untrusted = sorted(sio.get_untrusted_types(file=path))
    example = example_row(rows[tabular.names])
    config = {
        "sklearn": {
            "model": {"file": MODEL_FILE},
            "model_format": "skops",
            "task": tabular.task,
            "columns": tabular.names,
            "environment": [f"scikit-learn={sklearn.__version__}"],
            "example_input": {key: [value] for key, value in example.items()},
        }
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    trust = (
        f"\nIts estimator is not a scikit-learn type: the server loads it only when the operator "
        f"trusts {untrusted} for this model (`FHE_SERVER_TRUSTED_TYPES`).\n"
        if untrusted
        else ""
    )
    (out / "README.md").write_text(
        f"""# {out.name}: clear twin of `{metadata.name}`

The model of the encrypted bundle `{metadata.name}` before quantization, with the same
client-side preprocessing, served in the clear (the server sees the row). {_agreement(metadata)}
{trust}
Task: {tabular.task}; columns: {", ".join(f"`{name}`" for name in tabular.names)}.
Written by the run that built `{metadata.name}`; see its card for the data and the command.
"""
    )
    return untrusted
