"""The model card of tabular and raw bundles, rendered only from model.json's measured values."""

from __future__ import annotations

import json

from fhe.contract.bundle import (
    BundleMetadata,
    TabularInput,
    TabularMetrics,
    TabularTrainingInfo,
)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def _megabytes(value: int) -> str:
    return f"{value / 1e6:.2f} MB ({value:,} bytes)"


def _scored(values: dict[str, float]) -> str:
    """Accuracy and macro F1, or R² and MAE, in one cell."""
    if "accuracy" in values:
        return f"{_percent(values['accuracy'])} (macro F1 {values['macro_f1']:.3f})"
    return f"R² {values['r2']:.4f}, MAE {values['mae']:.3f}"


def _columns(info: TabularInput) -> str:
    imputed = set(info.preprocessing.imputes if info.preprocessing else [])
    rows = "\n".join(
        f"| `{column.name}` | {column.dtype} | "
        f"{'yes' if column.name in info.categorical else ''} | "
        f"{'yes' if column.name in imputed else ''} |"
        for column in info.columns
    )
    return "| column | dtype | categorical | may be missing (imputed) |\n|---|---|---|---|\n" + rows


def _measured(meta: BundleMetadata, m: TabularMetrics) -> str:
    c = meta.circuit
    if m.agreement_with_unquantized is not None:
        follows = (
            f"| encrypted labels equal to the unquantized model's | "
            f"{_percent(m.agreement_with_unquantized)} |"
        )
    elif m.max_quantization_error is not None:
        follows = (
            f"| largest difference between quantized and unquantized values (quantization error) | "
            f"{m.max_quantization_error:.4g} |"
        )
    else:
        follows = "| unquantized counterpart | none: the trees were fit on quantized inputs |"
    unquantized = _scored(m.unquantized) if m.unquantized is not None else "none (see below)"
    return f"""| what | value |
|---|---|
| unquantized model, in the clear ({m.rows} held-out rows) | {unquantized} |
| quantized model, in the clear (what FHE computes) | {_scored(m.quantized)} |
| FHE simulation, same rows | {_scored(m.simulated)} |
| real FHE execution, first {m.fhe_sample_size} rows | {_scored(m.fhe_sample)} |
| real FHE results equal to simulation on that sample | {_percent(m.fhe_sample_agreement_with_simulation)} |
{follows}
| FHE run per row, server side (median / p90) | {m.fhe_seconds_median:.3f} s / {m.fhe_seconds_p90:.3f} s |
| key generation on the client | {m.keygen_seconds:.2f} s |
| evaluation keys as uploaded | {_megabytes(m.evaluation_key_bytes)} |
| ciphertext sent per row | {_megabytes(m.ciphertext_in_bytes)} |
| ciphertext returned per row | {_megabytes(m.ciphertext_out_bytes)} |
| programmable bootstraps / max bit width | {c.pbs_count} / {c.max_bit_width} |
| compile time | {m.compile_seconds:.1f} s |

Measured on: {m.machine}."""


def _score(value: float | None) -> str:
    return "not cross-validated" if value is None else f"{value:.4f}"


def _training(t: TabularTrainingInfo) -> str:
    cv_rows = "\n".join(
        f"| {row['params']} | {_score(row.get('cv_score'))} | {row.get('pbs_count', '')} |"
        for row in t.cv_results
    )
    return f"""## Training

- Data: {t.data} (sha256 `{t.data_sha256}`), label column `{t.label_column}`, {t.rows} rows.
  Licence: {t.data_license or "see the data source"}.
- Split: {_percent(t.test_size)} held out ({t.test_rows} rows), {t.train_rows} train, seed {t.seed}.
- Model selection: {t.cv_folds}-fold cross-validation over {t.grid}; the best configuration
  within the PBS budget was kept.

| parameters | CV score (accuracy or R²) | PBS |
|---|---|---|
{cv_rows}

Rebuild with: `{t.command}`"""


def _conversion(meta: BundleMetadata) -> str:
    v = meta.conversion
    if v is None:
        return ""
    if v.agreement is not None:
        follows = (
            f"the encrypted model (FHE simulation) gives the clear model's label on "
            f"{_percent(v.agreement)} of them"
        )
        if v.fhe_sample_agreement is not None:
            follows += f", real FHE on {_percent(v.fhe_sample_agreement)} of its sample"
    else:
        follows = (
            f"the encrypted values differ from the clear model's by at most "
            f"{v.max_abs_difference:.4g} (mean {v.mean_abs_difference:.4g})"
        )
    steps = ", ".join(v.pipeline_steps) or "none"
    return f"""## Converted from a clear model

Converted from `{v.source}` (`{v.source_file}`, sha256 `{v.source_sha256}`), a scikit-learn
`{v.estimator}` with preprocessing steps: {steps}. On the {v.calibration_rows} calibration rows
of `{v.calibration}` (sha256 `{v.calibration_sha256}`), {follows}. The measurements below score
the encrypted model against the clear model's own predictions on those rows, not against true
labels.

Rebuild with: `{v.command}`

"""


def _twin(meta: BundleMetadata) -> str:
    if not meta.clear_twin:
        return ""
    return (
        f"Its clear twin, `{meta.clear_twin}`, is the same model before quantization, served "
        "beside it in the clear; the table shows how closely the two agree.\n\n"
    )


def render_tabular_card(meta: BundleMetadata) -> str:
    """Markdown for people saying what a tabular bundle's model.json says for machines."""
    info = meta.input
    if not isinstance(info, TabularInput):
        raise ValueError(f"{meta.name} is not a tabular bundle")
    steps = (
        "\n".join(f"  - {step}" for step in info.preprocessing.steps)
        if info.preprocessing
        else "  - none: the columns are the circuit's features"
    )
    labels = (
        "Labels: " + ", ".join(f"`{label}`" for label in meta.labels) + "."
        if meta.labels
        else "Output: one value."
    )
    params = ", ".join(f"{key}={value}" for key, value in sorted(meta.circuit.params.items()))
    measured = (
        _measured(meta, meta.metrics)
        if isinstance(meta.metrics, TabularMetrics)
        else "Not measured."
    )
    training = _training(meta.training) if isinstance(meta.training, TabularTrainingInfo) else ""
    versions = ", ".join(f"{key} {value}" for key, value in meta.versions.items())
    plain = ""
    if info.preprocessing and info.preprocessing.plain_file:
        plain = (
            f"\n\nThe same step as plain parameters, which clients apply without scikit-learn: "
            f"`{info.preprocessing.plain_file}` (sha256 `{info.preprocessing.plain_sha256}`)."
        )
    return f"""# {meta.name}: encrypted {meta.task.replace("-", " ")}

{meta.description}

The client checks a row's columns, runs the preprocessing below on its own machine, quantizes and
encrypts the {info.features} features, and the server runs a Concrete-ML `{meta.circuit.model_type}`
({params}) over the ciphertext. The server never sees the row, its features or the prediction.
{labels}

## Input

{_columns(info)}

Client-side preprocessing (`{info.preprocessing.file if info.preprocessing else "none"}`, loaded
with the same skops audit the server applies to clear models):
{steps}{plain}

Example row: `{json.dumps(info.example)}`

{_conversion(meta)}## Measured (by the run that built this bundle, not typed by hand)

{_twin(meta)}{measured}

{training}

## Versions

{versions}. Client spec (sha256 of `client.zip`): `{meta.client_spec_sha256}`.
"""
