"""The models a server hosts, from its models directory; each ready or unloadable with a reason."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhe.contract.bare_bundle import describe_bare_bundle, is_bare_bundle
from fhe.contract.bundle import (
    CARD_FILE,
    CLIENT_ZIP,
    METADATA_FILE,
    SERVER_ZIP,
    BundleMetadata,
    TabularInput,
    TabularMetrics,
    client_spec_hash,
    read_metadata,
)
from fhe.contract.digest import file_sha256
from fhe.contract.keyset import (
    KeysetDescription,
    client_spec_keyset,
    encrypted_input_dimensions,
    max_ciphertext_bytes,
    read_client_specs,
)
from fhe.contract.model_card import ConvertedFrom, FheModelCard, ModelSummary, TwinOf
from fhe.contract.raw_card import render_raw_card
from fhe.contract.server_zip import VERSION_MISMATCH, UnsupportedServerZip, read_server_zip
from server.errors import ConfigurationError
from server.models.clear import (
    TASKS,
    ClearModel,
    ModelPolicy,
    is_clear_model_dir,
    load_clear_model,
)
from server.models.listing import listing_row


@dataclass
class FHEModel:
    """One FHE bundle as the server sees it."""

    name: str
    path: Path
    metadata: BundleMetadata | None
    client_spec: str | None
    reason: str | None = None
    keyset: KeysetDescription | None = None
    max_ciphertext_bytes: int | None = None
    generated_card: str | None = None
    circuit_error: str | None = None

    kind = "fhe"

    @property
    def ready(self) -> bool:
        """True when the bundle can serve predictions (its circuit compiled here too)."""
        return self.reason is None and self.circuit_error is None

    @property
    def expected_run_seconds(self) -> float | None:
        """The p90 seconds of one run its card states (measured when the bundle was built),
        or None when the card states none."""
        measured = self.metadata.metrics if self.metadata else None
        return measured.fhe_seconds_p90 if measured and measured.fhe_seconds_p90 > 0 else None

    def client_file(self, what: str) -> tuple[str, str] | None:
        """(file name, sha256) of a file its clients download, `embedder delta` or
        `preprocessing`; None when the bundle has none."""
        return client_files(self.metadata).get(what) if self.metadata else None

    @property
    def columns(self) -> list[str] | None:
        """The feature columns of a tabular model, in order; None for other inputs."""
        info = self.metadata.input if self.metadata else None
        return info.names if isinstance(info, TabularInput) else None

    @property
    def origin(self) -> ConvertedFrom | TwinOf | None:
        """Which clear model this one came from and how closely it follows it: the converted
        model and the agreement on its calibration rows, or the clear twin and the agreement (or
        largest difference) on held-out rows; None for other bundles."""
        meta = self.metadata
        if meta is None:
            return None
        if meta.conversion is not None:
            conversion = meta.conversion
            return ConvertedFrom(
                converted_from=conversion.source,
                estimator=conversion.estimator,
                agreement=conversion.agreement,
                max_abs_difference=conversion.max_abs_difference,
            )
        if meta.clear_twin and isinstance(meta.metrics, TabularMetrics):
            return TwinOf(
                clear_twin=meta.clear_twin,
                agreement=meta.metrics.agreement_with_unquantized,
                max_abs_difference=meta.metrics.max_quantization_error,
            )
        return None

    def summary(self) -> ModelSummary:
        """The row of the model listing."""
        meta = self.metadata
        return listing_row(
            self.name,
            "fhe",
            task=meta.task if meta else None,
            input_kind=meta.input.kind if meta else None,
            labels=meta.labels if meta else [],
            columns=self.columns,
            origin=self.origin,
            reason=self.reason or self.circuit_error,
        )

    def card(self) -> FheModelCard:
        """The model card (fhe.contract.model_card, which clients read): the listing row,
        model.json and the card text."""
        card_path = self.path / CARD_FILE
        text = card_path.read_text() if card_path.is_file() else self.generated_card
        return FheModelCard(
            **self.summary().model_dump(exclude={"kind"}),
            client_spec_sha256=self.client_spec,
            metadata=self.metadata,
            card=text,
        )


def _described(path: Path) -> tuple[BundleMetadata, str | None]:
    """model.json, or for a bare Concrete-ML directory the one its files imply and its card."""
    if (path / METADATA_FILE).is_file():
        return read_metadata(path), None
    metadata = describe_bare_bundle(path)
    return metadata, render_raw_card(metadata)


def client_files(metadata: BundleMetadata) -> dict[str, tuple[str, str]]:
    """The files of a bundle its clients download, by what they are: (file name, sha256)."""
    files = {}
    if metadata.embedding and metadata.embedding.delta_file:
        info = metadata.embedding
        files["embedder delta"] = (info.delta_file, info.delta_sha256 or "")
    if metadata.embedding and metadata.embedding.projection:
        projection = metadata.embedding.projection
        files["projection"] = (projection.file, projection.sha256)
    if metadata.embedding and metadata.embedding.onnx:
        onnx = metadata.embedding.onnx
        files["embedder onnx"] = (onnx.file, onnx.sha256)
        files["tokenizer"] = (onnx.tokenizer_file, onnx.tokenizer_sha256)
    if isinstance(metadata.input, TabularInput) and metadata.input.preprocessing:
        step = metadata.input.preprocessing
        files["preprocessing"] = (step.file, step.sha256)
        if step.plain_file and step.plain_sha256:
            files["plain preprocessing"] = (step.plain_file, step.plain_sha256)
    return files


def _missing_client_file(path: Path, metadata: BundleMetadata) -> str | None:
    """Why a file the client downloads (embedder delta, preprocessing) is unusable, or None."""
    for what, (file, sha256) in client_files(metadata).items():
        local = (path / file).resolve()
        if not local.is_relative_to(path.resolve()) or not local.is_file():
            return f"{file} ({what}) is missing"
        if file_sha256(local) != sha256:
            return f"{file} does not match the sha256 in model.json"
    return None


def _projection_unfit(metadata: BundleMetadata, specs: dict[str, Any]) -> str | None:
    """Why a text bundle's projection cannot feed its circuit (another width), or None."""
    projection = metadata.embedding.projection if metadata.embedding else None
    if projection is None:
        return None
    try:
        width = encrypted_input_dimensions(specs)[-1]
    except (ValueError, IndexError):
        return "client.zip's circuit does not take one encrypted input"
    if width != projection.width:
        return f"the projection makes {projection.width} numbers, the circuit takes {width}"
    return None


def load_fhe_model(path: Path) -> FHEModel:
    """Inspect a bundle directory; never raises, a problem becomes the model's reason.

    A directory with only client.zip and server.zip is served as a raw model, with a card
    generated from what those files say.
    """
    name = path.name
    try:
        metadata, generated_card = _described(path)
    except (OSError, ValueError) as error:
        return FHEModel(name, path, None, None, f"model.json unreadable: {error}")
    name = metadata.name or name
    for required in (CLIENT_ZIP, SERVER_ZIP):
        if not (path / required).is_file():
            return FHEModel(name, path, metadata, None, f"{required} is missing")
    spec = client_spec_hash(path)
    if metadata.client_spec_sha256 and metadata.client_spec_sha256 != spec:
        reason = (
            f"client.zip has sha256 {spec} but model.json records {metadata.client_spec_sha256}"
        )
        return FHEModel(name, path, metadata, spec, reason)
    missing = _missing_client_file(path, metadata)
    if missing:
        return FHEModel(name, path, metadata, spec, missing)
    try:  # what the server compiles: refused here, with the reason, if it would not run
        read_server_zip(path / SERVER_ZIP)
    except UnsupportedServerZip as error:
        if str(error).startswith(VERSION_MISMATCH):  # the bundle's versions: it cannot load
            return FHEModel(name, path, metadata, spec, str(error))
        return FHEModel(name, path, metadata, spec, circuit_error=f"server.zip: {error}")
    try:  # KeyError: no specs member; ValueError: UnreadableZip (broken, over bounds, not JSON)
        # or JSON not shaped as Concrete writes it
        specs = read_client_specs(path / CLIENT_ZIP)
        keyset, max_bytes = client_spec_keyset(specs), max_ciphertext_bytes(specs)
    except (OSError, KeyError, ValueError) as error:
        return FHEModel(name, path, metadata, spec, f"client.zip has no readable specs: {error}")
    unfit = _projection_unfit(metadata, specs)
    if unfit:
        return FHEModel(name, path, metadata, spec, unfit)
    return FHEModel(
        name,
        path,
        metadata,
        spec,
        keyset=keyset,
        max_ciphertext_bytes=max_bytes,
        generated_card=generated_card,
    )


Model = FHEModel | ClearModel


class ModelRegistry:
    """Name -> model, read from a models directory at start-up."""

    def __init__(self, models: list[Model]) -> None:
        self._models = {model.name: model for model in models}

    @classmethod
    def scan(
        cls, models_dir: Path, policies: Callable[[str], ModelPolicy] | None = None
    ) -> ModelRegistry:
        """A sub-directory with model.json, or with only Concrete-ML's client.zip and server.zip,
        is an FHE bundle; one with a scikit-learn config.json or sklearn_model.joblib is a clear
        model, loaded under the operator's policy for it."""
        policies = policies or (lambda _: ModelPolicy())
        found: list[Model] = []
        if models_dir.is_dir():
            for path in sorted(models_dir.iterdir()):
                if (path / METADATA_FILE).is_file() or is_bare_bundle(path):
                    found.append(load_fhe_model(path))
                elif path.is_dir() and is_clear_model_dir(path):
                    found.append(load_clear_model(path, policy=policies(path.name)))
        return cls(found)

    def add(self, model: Model) -> None:
        """Host one more model (single-model mode), replacing one of the same name."""
        self._models[model.name] = model

    def get(self, name: str) -> Model | None:
        """The model called `name`, or None."""
        return self._models.get(name)

    def all(self) -> list[Model]:
        """Every model, ready or not, in name order."""
        return [self._models[name] for name in sorted(self._models)]


def resolve_model_id(model_id: str, models_dir: Path) -> Path:
    """A local directory, a name under the models directory, or a hub repository id."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local
    if (models_dir / model_id).is_dir():
        return models_dir / model_id
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=model_id))


def single_model(
    task: str | None,
    model_id: str | None,
    models_dir: Path,
    policies: Callable[[str], ModelPolicy],
) -> ClearModel | None:
    """The model of single-model mode (TASK and MODEL_ID), or None when they are unset.

    An unsupported TASK stops start-up with a clear error.
    """
    if not task and not model_id:
        return None
    if task not in TASKS:
        raise ConfigurationError(
            f"TASK={task!r} is not supported; supported tasks: {', '.join(TASKS)}"
        )
    if not model_id:
        raise ConfigurationError("single-model mode needs MODEL_ID beside TASK")
    name = Path(model_id).name if Path(model_id).is_dir() else model_id
    try:
        path = resolve_model_id(model_id, models_dir)
    except Exception as error:  # the hub client raises many kinds; serve the reason instead
        model = ClearModel(name, Path(model_id), task, {}, "", "", None)
        model.load_error = f"cannot fetch {model_id}: {error}"
        return model
    return load_clear_model(path, name=name, policy=policies(name), task=task)
