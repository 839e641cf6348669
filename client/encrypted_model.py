"""A remote FHE model seen from the client: keys, prepare, encrypt, send, decrypt.

The input (a text and its embedding, a table row and its preprocessed features, or a raw array),
the private key and the prediction stay on this machine; only evaluation keys and ciphertexts
cross the network.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from client.api import FHEServerAPI, PredictAnswer
from client.circuit_client import CircuitCodec, open_circuit_client
from client.errors import ClientError, UnknownKey
from client.inputs import ModelInput, TableRows, TextItems, model_input
from client.keycache import KeyCache, KeyRecord
from client.read_ahead import ReadAhead
from client.row_features import TabularRows
from client.settings import ClientSettings
from fhe.contract.atomic import write_atomic
from fhe.contract.bundle import BundleMetadata
from fhe.contract.digest import bytes_sha256, file_sha256
from fhe.contract.model_card import FheModelCard
from fhe.contract.outputs import top_class
from fhe.contract.projection import Projection
from fhe.contract.wire import JobStatus

T = TypeVar("T")


class ColumnWarning(UserWarning):
    """A row has columns the model does not take, or lacks ones its preprocessing imputes."""


@dataclass(frozen=True)
class Decrypted:
    """One decrypted result: a label and the score of every class, a value, or a raw array."""

    label: str | None
    scores: dict[str, float]
    seconds: float
    value: float | None = None
    output: list[float] | None = None

    def as_json(self) -> dict[str, Any]:
        """What the prediction is, as the CLI prints it."""
        if self.label is not None:
            return {"label": self.label, "scores": self.scores}
        if self.value is not None:
            return {"value": self.value}
        return {"output": self.output}


@dataclass
class Prediction:
    """One decrypted prediction with its input (text, row or array) and what it cost."""

    input: Any
    label: str | None
    scores: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    value: float | None = None
    output: list[float] | None = None

    @classmethod
    def of(
        cls,
        item: Any,
        decrypted: Decrypted,
        seconds: dict[str, float],
        ciphertext_in: int,
        ciphertext_out: int,
    ) -> Prediction:
        """A decrypted result with its timings and the sizes of the ciphertexts sent and got."""
        return cls(
            input=item,
            label=decrypted.label,
            scores=decrypted.scores,
            seconds=seconds,
            bytes={"ciphertext_in": ciphertext_in, "ciphertext_out": ciphertext_out},
            value=decrypted.value,
            output=decrypted.output,
        )

    @property
    def text(self) -> str:
        """The input as one line: the text itself, or a row or array as JSON."""
        import json

        return self.input if isinstance(self.input, str) else json.dumps(self.input)

    def as_json(self, verbose: bool = False) -> dict[str, Any]:
        """The JSON object the CLI prints per input."""
        kind = (
            "text"
            if isinstance(self.input, str)
            else "row"
            if isinstance(self.input, dict)
            else "input"
        )
        result = Decrypted(self.label, self.scores, 0.0, self.value, self.output).as_json()
        out: dict[str, Any] = {kind: self.input, **result}
        if verbose:
            out["seconds"] = self.seconds
            out["bytes"] = self.bytes
        return out


@dataclass(frozen=True)
class Encrypted:
    """One input on its way out: its clear features (a text's embedding, a row's preprocessed
    values, a raw array), their quantized integers and the ciphertext."""

    features: np.ndarray
    quantized: np.ndarray
    ciphertext: bytes
    prepare_seconds: float
    encrypt_seconds: float

    @property
    def seconds(self) -> float:
        """The client's time on it: preparing, quantizing and encrypting."""
        return self.prepare_seconds + self.encrypt_seconds


@dataclass(frozen=True)
class KeyInfo:
    """Keys ready on the client and known to the server."""

    key_id: str
    evaluation_key_bytes: int
    keygen_seconds: float
    generated_now: bool
    upload_seconds: float
    key_dir: Path
    uploaded: bool = True


class EncryptedModel:
    """One FHE model on a server, used through encryption."""

    def __init__(
        self,
        api: FHEServerAPI,
        name: str,
        cache_root: Path,
        embedding_model: str | None = None,
        embedder_cache: Path | None = None,
    ) -> None:
        self.api = api
        self.name = name
        self.cache_root = cache_root
        self.embedding_model = embedding_model
        self.embedder_cache = embedder_cache or cache_root / "embedders"
        self.column_warnings: list[str] = []
        self._reupload_lock = threading.Lock()
        self._reuploads = 0
        self._key_checked = False

    @classmethod
    def from_settings(
        cls,
        api: FHEServerAPI,
        name: str,
        settings: ClientSettings,
        embedding_model: str | None = None,
    ) -> EncryptedModel:
        """The model with the settings' key cache and embedder cache."""
        return cls(api, name, settings.cache_dir, embedding_model, settings.embedders_dir())

    @cached_property
    def card(self) -> FheModelCard:
        """The model card from the server, typed as the server writes it; the model must be an
        FHE model that is ready."""
        card = self.api.model(self.name)
        if not isinstance(card, FheModelCard):
            raise ClientError(f"model {self.name!r} is not an FHE model (kind {card.kind})")
        if not card.ready or card.metadata is None or not card.client_spec_sha256:
            raise ClientError(f"model {self.name!r} is not ready: {card.reason}")
        return card

    @property
    def metadata(self) -> BundleMetadata:
        """The bundle's model.json, as the card gives it."""
        assert self.card.metadata is not None
        return self.card.metadata

    @property
    def labels(self) -> list[str]:
        """Class labels, in the order of the decrypted scores (none for regression and raw)."""
        return list(self.card.labels)

    @property
    def task(self) -> str:
        """What the output means: text- or tabular-classification, tabular-regression, raw."""
        return self.metadata.task

    @property
    def input_kind(self) -> str:
        """`text`, `tabular` or `raw`."""
        return self.metadata.input.kind

    @cached_property
    def input(self) -> ModelInput:
        """The adapter for what this model takes (text, table rows or raw arrays)."""
        return model_input(
            self.name,
            self.metadata.input,
            self.api,
            self._downloaded,
            self.embedder_cache,
            self.embedding_model,
        )

    @property
    def client_spec(self) -> str:
        """The server's client spec hash."""
        return self.card.client_spec_sha256 or ""

    @staticmethod
    def _checked(what: str, data: bytes, sha256: str) -> bytes:
        """Downloaded bytes, refused unless their sha256 is the one the card gives."""
        if bytes_sha256(data) != sha256:
            raise ClientError(
                f"downloaded {what} has sha256 {bytes_sha256(data)}, but the card says "
                f"{sha256}; the server changed while we were talking, try again"
            )
        return data

    @cached_property
    def cache(self) -> KeyCache:
        """This model's cache directory, with client.zip downloaded and checked."""
        cache = KeyCache(self.cache_root, self.name, self.client_spec)
        if not cache.client_zip.is_file() or file_sha256(cache.client_zip) != self.client_spec:
            data = self._checked("client.zip", self.api.client_spec(self.name), self.client_spec)
            write_atomic(cache.client_zip, data, sync=False)
        return cache

    @cached_property
    def circuit(self) -> CircuitCodec:
        """Keys, quantization, encryption and decryption of the cached spec: the light client
        (no torch) for Concrete-ML's built-in models, Concrete-ML's own client otherwise."""
        return open_circuit_client(self.cache.dir, self.cache.key_dir)

    def _downloaded(
        self, what: str, sha256: str, suffix: str, download: Callable[[], bytes]
    ) -> Path:
        """A file the bundle's clients need, downloaded once, checked and kept by its hash."""
        path = self.embedder_cache / f"{sha256}{suffix}"
        if path.is_file() and file_sha256(path) == sha256:
            return path
        data = self._checked(what, download(), sha256)
        self.embedder_cache.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, sync=False)
        return path

    def _adapter(self, kind: type[T], wanted: str) -> T:
        """This model's input adapter, which must be of `kind`, else what the model takes."""
        if not isinstance(self.input, kind):
            raise ClientError(f"model {self.name!r} takes {self.input_kind}, not {wanted}")
        return self.input

    @property
    def embedder(self) -> Any:
        """A text model's embedder (the bundle's ONNX export, or one made here)."""
        return self._adapter(TextItems, "text").embedder

    @property
    def projection(self) -> Projection | None:
        """A text model's client-side reduction of the embedding, or None."""
        return self._adapter(TextItems, "text").projection

    def embed(self, texts: list[str]) -> np.ndarray:
        """The circuit's float inputs for texts (embedded, then projected)."""
        return self._adapter(TextItems, "text").embed(texts)

    @property
    def rows(self) -> TabularRows:
        """A tabular model's columns and preprocessing."""
        return self._adapter(TableRows, "table rows").rows

    @property
    def expected_fhe_seconds(self) -> float | None:
        """The FHE time per prediction that the training run measured, if the card has it."""
        metrics = self.metadata.metrics
        return metrics.fhe_seconds_median if metrics is not None else None

    def _generate(self, force: bool) -> tuple[KeyRecord, bytes, bool]:
        record = None if force else self.cache.record()
        if record is not None:
            return record, self.cache.evaluation_keys.read_bytes(), False
        started = time.perf_counter()
        self.cache.forget()
        serialized = self.circuit.generate_keys(force=force)
        record = KeyRecord(bytes_sha256(serialized), len(serialized), time.perf_counter() - started)
        self.cache.save(record, serialized)
        return record, serialized, True

    def server_holds(self, key_id: str) -> bool:
        """Whether the server holds this key, checked for this model's client spec (one small
        GET instead of uploading the evaluation keys again)."""
        status = self.api.key_status(key_id)
        return status is not None and status.fits(self.client_spec)

    def keys(self, force: bool = False, upload: bool = True, check: bool = True) -> KeyInfo:
        """Generate keys once (cached on disk) and upload the evaluation keys to the server,
        unless it says it holds them already (`check`: asked before the cached keys are even
        read)."""
        cached = None if force else self.cache.record()
        started = time.perf_counter()
        asked = cached is not None and upload and check
        uploaded = generated = False
        if asked and self.server_holds(cached.key_id):
            record = cached
        else:
            record, serialized, generated = self._generate(force)
            started = time.perf_counter()
            if upload and (generated or not check or asked or not self.server_holds(record.key_id)):
                answer = self.api.upload_keys(serialized, self.client_spec)
                if answer.key_id != record.key_id:
                    raise ClientError(
                        f"server computed key id {answer.key_id}, expected {record.key_id}"
                    )
                uploaded = True
        self._key_checked = self._key_checked or upload
        return KeyInfo(
            record.key_id,
            record.evaluation_key_bytes,
            record.keygen_seconds,
            generated,
            time.perf_counter() - started,
            self.cache.key_dir,
            uploaded,
        )

    def _key_id(self) -> str:
        """The key id to send, asking the server once per model object whether it still holds
        the key and uploading it when it does not."""
        record = self.cache.record()
        if record is None or not self._key_checked:
            return self.keys().key_id
        return record.key_id

    def features(self, item: Any) -> np.ndarray:
        """The circuit's float input (1 x n) for one item: a text's embedding, a row's
        preprocessed features or a raw row, checked against what the model takes."""
        return self.input.features(item)

    def encrypt(self, item: Any, prepared: tuple[np.ndarray, float] | None = None) -> Encrypted:
        """Prepare (embed, preprocess), quantize and encrypt one input on this machine.

        `prepared` gives the features and the seconds they took when they were made ahead, in a
        batch (see `prepare_ahead`).
        """
        started = time.perf_counter()
        vector, prepare_seconds = prepared or (self.features(item), 0.0)
        ready = time.perf_counter()
        prepare_seconds += ready - started
        quantized = self.circuit.quantize(vector)
        ciphertext = self.circuit.encrypt(quantized)
        encrypted = time.perf_counter()
        return Encrypted(vector[0], quantized[0], ciphertext, prepare_seconds, encrypted - ready)

    def prepare_ahead(self, items: Sequence[Any]) -> Iterator[tuple[np.ndarray, float]]:
        """Each item's features (1 x n) and its share of the time they took (texts are
        embedded in batches)."""
        return self.input.prepare_many(items)

    def _with_key(self, send: Callable[[str], T]) -> T:
        """`send(key_id)`; when the server has lost the key, upload it again and send once more.

        Requests in flight together that all find the key lost upload it once: the others wait
        for that upload and send again.
        """
        key_id = self._key_id()
        uploads_seen = self._reuploads
        try:
            return send(key_id)
        except UnknownKey:
            with self._reupload_lock:
                uploaded = self._reuploads == uploads_seen
                if uploaded:
                    self._upload_again()
        try:
            return send(key_id)
        except UnknownKey:
            if uploaded:
                raise
            with self._reupload_lock:  # lost again since another request's upload
                self._upload_again()
            return send(key_id)

    def _upload_again(self) -> None:
        self.keys(upload=True, check=False)
        self._reuploads += 1

    def run(self, ciphertext: bytes) -> PredictAnswer:
        """Send a ciphertext to the server and get the encrypted result; re-uploads lost keys."""
        return self._with_key(
            lambda key_id: self.api.predict(self.name, ciphertext, key_id, self.client_spec)
        )

    def submit(self, ciphertext: bytes, callback_url: str | None = None) -> JobStatus:
        """Queue a ciphertext as a job on the server; re-uploads lost keys. Returns its status."""
        return self._with_key(
            lambda key_id: self.api.submit_job(
                self.name, ciphertext, key_id, self.client_spec, callback_url
            )
        )

    def _load_private_key(self) -> None:
        """Load the cached key set before decrypting, in a process that has not encrypted yet."""
        if self.circuit.keys_loaded:
            return
        if self.cache.record() is None:
            raise ClientError(
                f"no private key for model {self.name!r} in {self.cache_root}: a result encrypted "
                "under another key cannot be decrypted here"
            )
        self.circuit.load_keys()

    def decrypt(self, ciphertext: bytes) -> Decrypted:
        """Decrypt and dequantize an encrypted result: a label and class scores, a value, or
        (raw models) the output array."""
        self._load_private_key()
        started = time.perf_counter()
        output = np.asarray(self.circuit.decrypt(ciphertext))[0]
        took = time.perf_counter() - started
        if self.task.endswith("classification"):
            by_label = dict(zip(self.labels, output.tolist(), strict=True))
            return Decrypted(self.labels[top_class(output)], by_label, took)
        if self.task == "tabular-regression":
            return Decrypted(None, {}, took, value=float(np.ravel(output)[0]))
        return Decrypted(None, {}, took, output=np.ravel(output).tolist())

    def predict(
        self,
        items: Sequence[Any] | Any,
        progress: Callable[[Prediction], None] | None = None,
        in_flight: int = 2,
    ) -> list[Prediction]:
        """Prepare, encrypt, run on the server and decrypt each input; the server sees only bytes.

        Items are texts, rows (a pandas DataFrame or dicts of column: value) or raw arrays, as
        the model takes. Rows' columns are checked before anything is encrypted. The next inputs
        are prepared and encrypted while the server runs earlier ones, with up to `in_flight`
        requests at the server at once; predictions come back in the items' order.
        """
        items = self.checked_items(items)
        self._key_id()
        results: list[Prediction] = []
        pending: deque[tuple[Any, Encrypted, Future]] = deque()

        def finish() -> None:
            item, encrypted, running = pending.popleft()
            answer, round_trip = running.result()
            decrypted = self.decrypt(answer.ciphertext)
            seconds = {
                "prepare": encrypted.prepare_seconds,
                "encrypt": encrypted.encrypt_seconds,
                "server": answer.server_seconds,
                "fhe": answer.fhe_seconds,
                "round_trip": round_trip,
                "decrypt": decrypted.seconds,
                "total": encrypted.seconds + round_trip + decrypted.seconds,
            }
            prediction = Prediction.of(
                item, decrypted, seconds, len(encrypted.ciphertext), len(answer.ciphertext)
            )
            results.append(prediction)
            if progress is not None:
                progress(prediction)

        in_flight = max(1, in_flight)
        sender = ThreadPoolExecutor(in_flight, thread_name_prefix="predict")
        try:
            with ReadAhead(self._encrypted(items), depth=in_flight + 1) as encrypting:
                try:
                    for item, encrypted in encrypting:
                        run = sender.submit(self._timed_run, encrypted)
                        pending.append((item, encrypted, run))
                        if len(pending) >= in_flight:
                            finish()
                except Exception:
                    while pending:
                        finish()  # what already reached the server is still reported
                    raise
                while pending:
                    finish()
        except BaseException:
            sender.shutdown(wait=False, cancel_futures=True)
            raise
        sender.shutdown()
        return results

    def _encrypted(self, items: list[Any]) -> Iterator[tuple[Any, Encrypted]]:
        """Each item with its encryption (which holds the seconds its preparation took)."""
        for item, prepared in zip(items, self.prepare_ahead(items), strict=True):
            yield item, self.encrypt(item, prepared)

    def _timed_run(self, encrypted: Encrypted) -> tuple[PredictAnswer, float]:
        started = time.perf_counter()
        answer = self.run(encrypted.ciphertext)
        return answer, time.perf_counter() - started

    def checked_items(self, items: Sequence[Any] | Any) -> list[Any]:
        """The items as a list (a DataFrame becomes its rows); each row's columns checked.

        Extra (or imputed missing) columns are warnings: kept in `column_warnings` and issued as
        `ColumnWarning`s, which the command line shows in its own words.
        """
        if hasattr(items, "to_dict") and hasattr(items, "columns"):
            items = items.to_dict(orient="records")
        items = list(items)
        found = self.input.warnings(items)
        self.column_warnings = found
        for warning in found:
            warnings.warn(warning, ColumnWarning, stacklevel=3)
        return items
