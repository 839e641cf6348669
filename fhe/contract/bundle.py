"""The FHE model bundle: Concrete-ML's client.zip and server.zip plus model.json describing them.

Format 2 says what the input is (`text`, `tabular` or `raw`) and what the output means (the task).
Format 1 bundles (text only, `embedding` at the top level) are read as format 2 text bundles.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from fhe.contract.digest import file_sha256
from fhe.contract.versions import library_versions

BUNDLE_FORMAT = 2
CLIENT_ZIP = "client.zip"
SERVER_ZIP = "server.zip"
METADATA_FILE = "model.json"
CARD_FILE = "README.md"
PREPROCESSING_FILE = "preprocessing.skops"
PLAIN_PREPROCESSING_FILE = "preprocessing.json"
ONNX_EMBEDDER_FILE = "embedder.onnx"
TOKENIZER_FILE = "tokenizer.json"

FHE_TASKS = ("text-classification", "tabular-classification", "tabular-regression", "raw")
"""What an FHE bundle's output means: class scores of a text or a row, a value, or a bare array."""


class ProjectionInfo(BaseModel):
    """A client-side reduction of the embedding (fhe.contract.projection): its file in the
    bundle, served to clients at /v1/models/{name}/projection and checked by sha256, and what it
    keeps."""

    file: str
    sha256: str
    bytes: int
    method: str = "pca"
    width: int
    explained_variance: float


class OnnxEmbedderInfo(BaseModel):
    """The embedder as an ONNX file with its tokenizer, exported at build time from the exact
    weights (base plus delta), so that a client embeds with ONNX Runtime and never needs torch.

    Both files are served to clients (/v1/models/{name}/embedder-onnx and /tokenizer) and
    checked by sha256. `max_difference` is the largest difference from the torch embedding the
    build measured on its check texts, within `tolerance`.
    """

    file: str = ONNX_EMBEDDER_FILE
    sha256: str
    bytes: int
    tokenizer_file: str = TOKENIZER_FILE
    tokenizer_sha256: str
    tokenizer_bytes: int
    precision: Literal["float32", "int8"] = "float32"
    max_difference: float
    tolerance: float
    accuracy: float | None = None


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
    projection: ProjectionInfo | None = None
    onnx: OnnxEmbedderInfo | None = None


class TextInput(BaseModel):
    """A text, embedded on the client by the bundle's embedder."""

    kind: Literal["text"] = "text"
    embedding: EmbeddingInfo


class Column(BaseModel):
    """One feature column of a tabular input, in the order the model takes them."""

    name: str
    dtype: str


class Preprocessing(BaseModel):
    """The client-side scikit-learn transformer (skops) from a row to the circuit's features.

    `imputes` lists the columns it fills in when missing. Clients load the file with the same
    skops audit the server uses for clear models, after checking its sha256. When the transformer
    is made only of steps that plain parameters describe (imputing, scaling, one-hot), the same
    step is also in `plain_file` (JSON, fhe.contract.preprocessing), which a client applies
    without scikit-learn.
    """

    file: str = PREPROCESSING_FILE
    sha256: str
    bytes: int
    steps: list[str]
    imputes: list[str] = Field(default_factory=list)
    plain_file: str | None = None
    plain_sha256: str | None = None
    plain_bytes: int | None = None


class TabularInput(BaseModel):
    """A table row: named, typed columns, optionally transformed on the client before encrypting."""

    kind: Literal["tabular"] = "tabular"
    columns: list[Column]
    categorical: list[str] = Field(default_factory=list)
    preprocessing: Preprocessing | None = None
    features: int
    example: dict[str, Any] | None = None

    @property
    def names(self) -> list[str]:
        """The column names, in order."""
        return [column.name for column in self.columns]


class RawInput(BaseModel):
    """A bare numeric array of the circuit's input shape: `features` numbers, arranged as `shape`
    (one input without its batch dimension; None for a flat row)."""

    kind: Literal["raw"] = "raw"
    features: int = Field(ge=1)
    shape: list[int] | None = None

    @model_validator(mode="after")
    def _shape_holds_the_features(self) -> RawInput:
        if self.shape is not None and (
            not self.shape or min(self.shape) < 1 or math.prod(self.shape) != self.features
        ):
            raise ValueError(f"shape {self.shape} does not hold {self.features} numbers")
        return self


InputInfo = Annotated[TextInput | TabularInput | RawInput, Field(discriminator="kind")]


class CircuitInfo(BaseModel):
    """The compiled model: its type, hyper-parameters and FHE cost."""

    model_type: str
    params: dict[str, Any]
    pbs_count: int | None = None
    max_bit_width: int | None = None
    compress_evaluation_keys: bool = True
    compress_input_ciphertexts: bool = True
    p_error: float | None = None


class SplitInfo(BaseModel):
    """The data a bundle was trained and measured on, its held-out split and model selection."""

    data: str
    data_sha256: str
    data_license: str = ""
    label_column: str
    train_rows: int
    test_rows: int
    test_size: float
    seed: int
    cv_folds: int
    grid: dict[str, list[Any]]
    cv_results: list[dict[str, Any]] = Field(default_factory=list)
    command: str = ""


class TrainingInfo(SplitInfo):
    """The texts a text bundle was trained on: their column and how rows were kept."""

    text_column: str
    rows_read: int
    rows_kept: int
    deduplicated_by: str | None


class TabularTrainingInfo(SplitInfo):
    """The table a tabular bundle was trained on."""

    rows: int


class Timings(BaseModel):
    """What running the circuit costs, measured on real FHE."""

    fhe_sample_size: int
    fhe_seconds_median: float
    fhe_seconds_p90: float
    keygen_seconds: float
    evaluation_key_bytes: int
    ciphertext_in_bytes: int
    ciphertext_out_bytes: int
    compile_seconds: float
    machine: str = ""


class Metrics(Timings):
    """Measured numbers of a text bundle, written by the training recipe; none typed by hand."""

    clear_accuracy: float
    clear_macro_f1: float
    simulated_accuracy: float
    simulated_macro_f1: float
    fhe_sample_accuracy: float
    fhe_sample_agreement_with_simulation: float


class TabularMetrics(Timings):
    """Scores of a tabular bundle on held-out rows: accuracy and macro F1, or R² and MAE.

    `unquantized` is the float model before quantization (None for trees the recipe trains:
    Concrete-ML fits them on quantized inputs, so no float twin exists), `quantized` the clear
    quantized one (which FHE reproduces), `simulated` FHE simulation and `fhe_sample` real FHE on
    the first `fhe_sample_size` rows. How closely the encrypted model follows the unquantized one
    (its clear twin): `agreement_with_unquantized`, the share of equal labels, or
    `max_quantization_error`, the largest |quantized - unquantized| value, on the held-out rows.
    """

    rows: int
    unquantized: dict[str, float] | None
    quantized: dict[str, float]
    simulated: dict[str, float]
    fhe_sample: dict[str, float]
    fhe_sample_agreement_with_simulation: float
    agreement_with_unquantized: float | None = None
    max_quantization_error: float | None = None


class Conversion(BaseModel):
    """Where a converted bundle came from, and how closely it follows that clear model.

    Classification: `agreement` is the share of calibration rows whose encrypted label equals the
    clear model's. Regression: the largest and mean |encrypted - clear| on those rows.
    """

    source: str
    source_file: str
    source_sha256: str
    estimator: str
    pipeline_steps: list[str]
    calibration: str
    calibration_sha256: str
    calibration_rows: int
    agreement: float | None = None
    fhe_sample_agreement: float | None = None
    max_abs_difference: float | None = None
    mean_abs_difference: float | None = None
    command: str = ""


class BundleMetadata(BaseModel):
    """Everything model.json holds about one FHE model."""

    format: int = BUNDLE_FORMAT
    name: str
    kind: str = "fhe"
    task: str = "text-classification"
    labels: list[str] = Field(default_factory=list)
    description: str = ""
    input: InputInfo
    circuit: CircuitInfo
    training: TrainingInfo | TabularTrainingInfo | None = None
    metrics: Metrics | TabularMetrics | None = None
    conversion: Conversion | None = None
    clear_twin: str | None = None
    versions: dict[str, str] = Field(default_factory=library_versions)
    client_spec_sha256: str = ""
    created: str = ""

    @model_validator(mode="before")
    @classmethod
    def _format_1(cls, data: Any) -> Any:
        """A format 1 bundle: a text model with `embedding` at the top level."""
        if isinstance(data, dict) and "input" not in data and "embedding" in data:
            embedding = data["embedding"]
            data = {key: value for key, value in data.items() if key != "embedding"}
            data["input"] = {"kind": "text", "embedding": embedding}
        return data

    @property
    def embedding(self) -> EmbeddingInfo | None:
        """The embedder of a text bundle; None for other inputs."""
        return self.input.embedding if isinstance(self.input, TextInput) else None


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
