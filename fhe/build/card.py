"""The model card (README.md beside model.json), rendered only from measured metadata."""

from __future__ import annotations

from fhe.contract.bundle import BundleMetadata


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _p_error(p_error: float | None) -> str:
    """The PBS error probability as compiled; None is Concrete-ML's default."""
    return "2^-40 (Concrete-ML's default)" if p_error is None else f"{p_error:g}"


def _megabytes(value: int) -> str:
    return f"{value / 1e6:.2f} MB ({value:,} bytes)"


def render_card(meta: BundleMetadata) -> str:
    """Markdown for people saying what model.json says for machines."""
    m, c, t, e = meta.metrics, meta.circuit, meta.training, meta.embedding
    params = ", ".join(f"{key}={value}" for key, value in sorted(c.params.items()))
    versions = ", ".join(f"{key} {value}" for key, value in meta.versions.items())
    cv_rows = "\n".join(
        f"| {row['params']} | "
        f"{'not cross-validated' if row['cv_accuracy'] is None else _percent(row['cv_accuracy'])}"
        f" | {row.get('pbs_count', '')} |"
        for row in t.cv_results
    )
    selection = (
        f"{t.cv_folds}-fold stratified cross-validation over the grid {t.grid}; the most "
        "accurate configuration within the circuit budget was kept."
        if t.cv_folds >= 2
        else f"one configuration, {t.grid}, trained without cross-validation."
    )
    tuned = ""
    if e.delta_sha256:
        ft = e.fine_tuning or {}
        smoothing = (
            f", label smoothing {ft['label_smoothing']}" if ft.get("label_smoothing") else ""
        )
        tuned = (
            f"\n\nThe embedder was fine-tuned on the training split ({ft.get('epochs')} epochs, "
            f"learning rate {ft.get('learning_rate')}, batch {ft.get('batch_size')}{smoothing}, "
            f"seed {ft.get('seed')}): the changed tensors ship in `{e.delta_file}` "
            f"({_megabytes(e.delta_bytes or 0)}, sha256 `{e.delta_sha256}`), which the server "
            "hands to clients and they apply over the base weights."
        )
    reduced = ""
    if e.projection is not None:
        r = e.projection
        reduced = (
            f"\n\nBefore quantizing, the client reduces the embedding to its {r.width} leading "
            f"principal components (PCA fitted on the training split's embeddings, "
            f"{_percent(r.explained_variance)} of their variance): `{r.file}` "
            f"({_megabytes(r.bytes)}, sha256 `{r.sha256}`), which the server hands to clients. "
            f"The server computes on {r.width} encrypted numbers instead of {e.dimension}."
        )
    shipped = ""
    if e.onnx is not None:
        o = e.onnx
        shipped = (
            f"\n\nThe embedder also ships exported to ONNX ({o.precision}): `{o.file}` "
            f"({_megabytes(o.bytes)}, sha256 `{o.sha256}`) with `{o.tokenizer_file}` (sha256 "
            f"`{o.tokenizer_sha256}`), which the server hands to clients: they embed with ONNX "
            "Runtime and need no torch. The build checked it against the torch embedder: at "
            f"most {o.max_difference:.2g} apart on its check texts (tolerance {o.tolerance:g})."
        )
    return f"""# {meta.name}: encrypted {meta.task.replace("-", " ")}

{meta.description}

The client embeds text with `{e.model_id}` ({e.pooling} pooling, max {e.max_length} tokens,
{e.dimension} dimensions, weights sha256 `{e.weights_sha256}`), quantizes and encrypts the vector,
and the server runs a Concrete-ML `{c.model_type}` ({params}) over the ciphertext. Labels:
{", ".join(f"`{label}`" for label in meta.labels)}.{tuned}{reduced}{shipped}

## Measured (by the training recipe, not typed by hand)

| what | value |
|---|---|
| accuracy in the clear (quantized model, no encryption) | {_percent(m.clear_accuracy)} (macro F1 {m.clear_macro_f1:.3f}) |
| accuracy under FHE simulation, whole test split ({t.test_rows} texts) | {_percent(m.simulated_accuracy)} (macro F1 {m.simulated_macro_f1:.3f}) |
| accuracy under real FHE execution, sample of {m.fhe_sample_size} test texts | {_percent(m.fhe_sample_accuracy)} |
| real FHE results equal to simulation on that sample | {_percent(m.fhe_sample_agreement_with_simulation)} |
| FHE run per text, server side (median / p90) | {m.fhe_seconds_median:.2f} s / {m.fhe_seconds_p90:.2f} s |
| key generation on the client | {m.keygen_seconds:.2f} s |
| evaluation keys as uploaded (compressed: {c.compress_evaluation_keys}) | {_megabytes(m.evaluation_key_bytes)} |
| ciphertext sent per text (compressed: {c.compress_input_ciphertexts}) | {_megabytes(m.ciphertext_in_bytes)} |
| ciphertext returned per text | {_megabytes(m.ciphertext_out_bytes)} |
| programmable bootstraps / max bit width | {c.pbs_count} / {c.max_bit_width} |
| error probability of one PBS | {_p_error(c.p_error)} |
| compile time | {m.compile_seconds:.1f} s |

Measured on: {m.machine}.

## Training

- Data: `{t.data}` (sha256 `{t.data_sha256}`), text column `{t.text_column}`, label column
  `{t.label_column}`. {t.rows_read} rows read, {t.rows_kept} kept after dropping empty rows
  and de-duplicating by `{t.deduplicated_by}`.
- Split: stratified, {_percent(t.test_size)} test ({t.test_rows} texts), {t.train_rows} train, seed {t.seed}.
- Data licence: {t.data_license or "see the data source"}. The data is not redistributed here;
  only the trained model is.
- Model selection: {selection}

| parameters | CV accuracy | PBS |
|---|---|---|
{cv_rows}

Rebuild with: `{t.command}`

## Versions

{versions}. Client spec (sha256 of `client.zip`): `{meta.client_spec_sha256}`.
A server running another Concrete-ML version lists this bundle as unloadable.
"""
