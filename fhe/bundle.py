"""The FHE model bundle: Concrete-ML's client.zip and server.zip plus model.json describing them."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from fhe.digest import file_sha256
from fhe.versions import library_versions

BUNDLE_FORMAT = 1
CLIENT_ZIP = "client.zip"
SERVER_ZIP = "server.zip"
METADATA_FILE = "model.json"
CARD_FILE = "README.md"


class EmbeddingInfo(BaseModel):
    """The client-side embedder a bundle expects; the client checks its weights against the hash.

    A fine-tuned embedder is the base weights plus `delta_file` (in the bundle, served to clients
    at /v1/models/{name}/embedder-delta), which holds the tensors fine-tuning changed.
    """

    model_id: str
    pooling: str = "mean"
    max_length: int
    dimension: int
    weights_sha256: str
    delta_file: str | None = None
    delta_sha256: str | None = None
    delta_bytes: int | None = None
    fine_tuning: dict[str, Any] | None = None


class CircuitInfo(BaseModel):
    """The compiled model: its type, hyper-parameters and FHE cost."""

    model_type: str
    params: dict[str, Any]
    pbs_count: int | None = None
    max_bit_width: int | None = None
    compress_evaluation_keys: bool = True
    compress_input_ciphertexts: bool = True
    p_error: float | None = None


class TrainingInfo(BaseModel):
    """The data and split the bundle was trained and measured on."""

    data: str
    data_sha256: str
    data_license: str = ""
    text_column: str
    label_column: str
    rows_read: int
    rows_kept: int
    deduplicated_by: str | None
    train_rows: int
    test_rows: int
    test_size: float
    seed: int
    cv_folds: int
    grid: dict[str, list[Any]]
    cv_results: list[dict[str, Any]] = Field(default_factory=list)
    command: str = ""


class Metrics(BaseModel):
    """Measured numbers, written by the training recipe; none are typed by hand."""

    clear_accuracy: float
    clear_macro_f1: float
    simulated_accuracy: float
    simulated_macro_f1: float
    fhe_sample_size: int
    fhe_sample_accuracy: float
    fhe_sample_agreement_with_simulation: float
    fhe_seconds_median: float
    fhe_seconds_p90: float
    keygen_seconds: float
    evaluation_key_bytes: int
    ciphertext_in_bytes: int
    ciphertext_out_bytes: int
    compile_seconds: float
    machine: str = ""


class BundleMetadata(BaseModel):
    """Everything model.json holds about one FHE model."""

    format: int = BUNDLE_FORMAT
    name: str
    kind: str = "fhe"
    task: str = "text-classification"
    labels: list[str]
    description: str = ""
    embedding: EmbeddingInfo
    circuit: CircuitInfo
    training: TrainingInfo
    metrics: Metrics
    versions: dict[str, str] = Field(default_factory=library_versions)
    client_spec_sha256: str = ""
    created: str = ""


def client_spec_hash(bundle_dir: Path) -> str:
    """The client spec hash: sha256 of client.zip, which clients send with every request."""
    return file_sha256(bundle_dir / CLIENT_ZIP)


def read_metadata(bundle_dir: Path) -> BundleMetadata:
    """Parse model.json of a bundle directory."""
    return BundleMetadata.model_validate_json((bundle_dir / METADATA_FILE).read_text())


def write_metadata(bundle_dir: Path, metadata: BundleMetadata) -> None:
    """Write model.json, stable and human-readable."""
    text = json.dumps(metadata.model_dump(mode="json"), indent=2, sort_keys=False)
    (bundle_dir / METADATA_FILE).write_text(text + "\n")


def export_circuit(model: Any, bundle_dir: Path) -> str:
    """Save a compiled model's client.zip and server.zip; return the client spec hash."""
    from concrete.ml.deployment import FHEModelDev

    bundle_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        FHEModelDev(scratch, model).save()
        for name in (CLIENT_ZIP, SERVER_ZIP):
            shutil.copyfile(Path(scratch) / name, bundle_dir / name)
    return client_spec_hash(bundle_dir)
