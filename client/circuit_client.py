"""Keys, encryption and decryption for one compiled model, from its `client.zip`.

Concrete-ML's `FHEModelClient` does this too, but importing it loads concrete.fhe and torch:
about 5 s of a one-shot `fhe-client predict` on 2 cores, around a 0.03 s encryption. For the
model classes listed in `OUTPUTS`, `CircuitClient` does the same work with `concrete.compiler`
(Concrete's runtime, 0.25 s to import) and numpy: the same key set cache, the same quantization
and post-processing (Concrete-ML 1.9's, read from the bundle), the same ciphertexts.
`open_circuit_client` falls back to `FHEModelClient` for anything else (a custom torch model,
TFHE-rs ciphertexts, several inputs).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from client.errors import ClientError
from client.quantizer import Quantizer, UnsupportedProcessing
from fhe.contract.concrete_zip import ClientZip, UnreadableZip, read_client_zip
from fhe.contract.keyset import encrypted_input, encrypted_input_dimensions
from fhe.contract.outputs import UnknownModelType, built_in_model_class


class CircuitCodec(Protocol):
    """What the client needs of one compiled model: keys, encryption and decryption."""

    @property
    def keys_loaded(self) -> bool:
        """Whether a key set is in memory."""

    def load_keys(self) -> None:
        """Load the key set of the key directory (made there when missing)."""

    def generate_keys(self, force: bool) -> bytes:
        """Make (or load from the key directory) the key set; the serialized evaluation keys."""

    def quantize(self, features: np.ndarray) -> np.ndarray:
        """Float features (1 x n) to the circuit's integers."""

    def encrypt(self, quantized: np.ndarray) -> bytes:
        """Encrypt quantized integers under the private key; the serialized ciphertext."""

    def decrypt(self, ciphertext: bytes) -> np.ndarray:
        """Decrypt, dequantize and post-process a result: class scores, values or an array."""


@dataclass(frozen=True)
class OutputRule:
    """How a model class turns dequantized circuit outputs into predictions."""

    trees: bool
    """Inputs are quantized feature by feature and outputs summed over the trees."""
    scores: bool = False
    """Sigmoid (binary) or softmax of the summed outputs, as Concrete-ML's classifiers do."""
    shift: float = 0.0
    """Added at the end (XGBoost regression's base score of 0.5, cut from the circuit)."""


MAX_SPEC_BYTES = 64 * 1024 * 1024
"""Largest spec or processing file read from a client.zip (the server sends it)."""

OUTPUTS: dict[str, OutputRule] = {
    "XGBClassifier": OutputRule(trees=True, scores=True),
    "DecisionTreeClassifier": OutputRule(trees=True),
    "RandomForestClassifier": OutputRule(trees=True),
    "XGBRegressor": OutputRule(trees=True, shift=0.5),
    "DecisionTreeRegressor": OutputRule(trees=True),
    "RandomForestRegressor": OutputRule(trees=True),
    "LogisticRegression": OutputRule(trees=False, scores=True),
    "LinearSVC": OutputRule(trees=False, scores=True),
    "LinearRegression": OutputRule(trees=False),
    "Ridge": OutputRule(trees=False),
    "Lasso": OutputRule(trees=False),
    "ElasticNet": OutputRule(trees=False),
    "LinearSVR": OutputRule(trees=False),
}
"""Concrete-ML's built-in models whose post-processing this module reproduces (1.9's)."""


def _squeezed(values: np.ndarray) -> np.ndarray:
    """(n, 1) to (n,), as Concrete-ML does after dequantizing and after summing trees."""
    return values.ravel() if values.ndim == 2 and values.shape[1] == 1 else values


def _scores(values: np.ndarray) -> np.ndarray:
    """Concrete-ML's classifier post-processing: [1 - p, p] from a sigmoid, or a softmax."""
    classes = values.shape[1] if values.ndim > 1 and values.shape[1] > 1 else 2
    if classes == 2:
        probability = np.exp(-np.logaddexp(0, -values))
        if probability.ndim == 1 or probability.shape[1] == 1:
            probability = probability.flatten()
            return np.vstack([1 - probability, probability]).T
        return probability
    exponentials = np.exp(values)
    return exponentials / np.sum(exponentials, axis=1, keepdims=True)


def model_class(processing: dict[str, Any]) -> str:
    """The Concrete-ML built-in class a bundle was saved from; UnsupportedProcessing else."""
    try:
        return built_in_model_class(processing)
    except UnknownModelType as error:
        raise UnsupportedProcessing(str(error)) from None


KNOWN_CONCRETE_ML = ("1.9.0",)
"""Concrete-ML versions whose quantizers and post-processing this client reproduces."""


class UnknownConcreteML(UnsupportedProcessing):
    """The bundle's client.zip was written by a Concrete-ML this client does not know."""

    def __init__(self, found: str) -> None:
        self.found = found
        known = ", ".join(KNOWN_CONCRETE_ML)
        super().__init__(
            f"the model's client.zip was made by Concrete-ML {found}, and this client decodes "
            f"only what Concrete-ML {known} makes"
        )


def bundle_concrete_ml(client_zip: ClientZip) -> str:
    """The Concrete-ML version a client.zip records in its versions.json ('none recorded')."""
    try:
        found = client_zip.versions().get("concrete-ml")
    except KeyError:
        return "none recorded"
    except UnreadableZip:
        return "unreadable"
    return found or "none recorded"


class CircuitClient:
    """One built-in Concrete-ML model's client side, with `concrete.compiler` and numpy only."""

    def __init__(self, client_zip: Path, key_dir: Path) -> None:
        try:
            self._read(client_zip)
        except UnsupportedProcessing:
            raise
        except UnreadableZip as error:
            raise UnsupportedProcessing(f"unexpected client.zip ({error})") from None
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise UnsupportedProcessing(f"unexpected client.zip ({error!r})") from None
        self.key_dir = key_dir
        self._keyset: Any = None
        self._program: Any = None
        self._lock = threading.RLock()
        """One key set operation at a time: a batch encrypts ahead while it decrypts."""

    def _read(self, client_zip: Path) -> None:
        members = read_client_zip(client_zip, MAX_SPEC_BYTES)
        version = bundle_concrete_ml(members)
        if version not in KNOWN_CONCRETE_ML:
            raise UnknownConcreteML(version)
        specs, processing = members.specs(), members.processing()
        self.model_class = model_class(processing)
        rule = OUTPUTS.get(self.model_class)
        if rule is None:
            raise UnsupportedProcessing(f"no output rule for {self.model_class}")
        if processing.get("ciphertext_format", "concrete") != "concrete":
            raise UnsupportedProcessing(f"ciphertext format {processing['ciphertext_format']}")
        if processing.get("model_post_processing_params"):
            raise UnsupportedProcessing("post-processing parameters")
        self.rule = rule
        self.inputs = [Quantizer.from_json(entry) for entry in processing["input_quantizers"]]
        outputs = [Quantizer.from_json(entry) for entry in processing["output_quantizers"]]
        try:
            encrypted = encrypted_input(specs)
            self.input_shape = tuple(encrypted_input_dimensions(specs))
        except ValueError as error:
            raise UnsupportedProcessing(str(error)) from None
        if len(outputs) != 1:
            raise UnsupportedProcessing(f"{len(outputs)} outputs, not one")
        self.output = outputs[0]
        self.function = specs["circuits"][0]["name"]
        encoding = encrypted["encoding"]["integer"]
        width = int(encoding["width"])
        if not 1 <= width <= 64:
            raise UnsupportedProcessing(f"input width {width}")
        low = -(2 ** (width - 1)) if encoding["isSigned"] else 0
        self.input_range = (low, low + 2**width - 1)
        specs.pop("tfhers_specs", None)
        self._specs = json.dumps(specs).encode()

    @property
    def keys_loaded(self) -> bool:
        """Whether a key set is in memory."""
        return self._keyset is not None

    def load_keys(self) -> None:
        """Load the key set of the key directory, made there when missing (Concrete's key set
        cache: the same files as Concrete-ML's client)."""
        from concrete.compiler import ClientProgram, Keyset, KeysetCache, ProgramInfo

        with self._lock:
            self.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            info = ProgramInfo.deserialize(self._specs)
            self._keyset = Keyset(info, KeysetCache(str(self.key_dir)))
            self._program = ClientProgram.create_encrypted(info, self._keyset)

    def generate_keys(self, force: bool) -> bytes:
        """The key set of the key directory, made there when missing, or anew when `force`
        (Concrete's cache would otherwise hand back the old one); its evaluation keys."""
        with self._lock:
            if force:
                shutil.rmtree(self.key_dir, ignore_errors=True)
            if force or self._keyset is None:
                self.load_keys()
            return self._keyset.get_server_keys().serialize()

    def quantize(self, features: np.ndarray) -> np.ndarray:
        """Float features (1 x n) to the circuit's integers, as Concrete-ML quantizes them."""
        if not self.rule.trees:
            return self.inputs[0].quant(features)
        quantized = np.zeros_like(features, dtype=np.int64)
        for column, quantizer in enumerate(self.inputs):
            quantized[:, column] = quantizer.quant(features[:, column])
        return quantized

    def _circuit(self) -> Any:
        if self._program is None:
            self.load_keys()
        return self._program.get_client_circuit(self.function)

    def encrypt(self, quantized: np.ndarray) -> bytes:
        """Encrypt the quantized input (its shape and range checked); the serialized ciphertext."""
        from concrete.compiler import Value

        values = np.asarray(quantized, dtype=np.int64)
        low, high = self.input_range
        if values.shape != self.input_shape or values.min() < low or values.max() > high:
            raise ClientError(
                f"the circuit takes integers of shape {self.input_shape} in [{low}, {high}], "
                f"got shape {values.shape}"
                + (f" in [{values.min()}, {values.max()}]" if values.size else "")
            )
        with self._lock:
            return self._circuit().prepare_input(Value(values), 0).serialize()

    def decrypt(self, ciphertext: bytes) -> np.ndarray:
        """Decrypt, dequantize and post-process a result as Concrete-ML's client does."""
        from concrete.compiler import TransportValue

        try:
            result = TransportValue.deserialize(ciphertext)
        except Exception as error:  # the runtime's own error types are not importable
            raise ClientError(f"the encrypted result is unreadable: {error}") from None
        with self._lock:
            clear = self._circuit().process_output(result, 0).to_py_val()
        values = _squeezed(self.output.dequant(np.asarray(clear, dtype=np.int64)))
        if self.rule.trees:
            values = _squeezed(np.sum(values, axis=-1))
        if self.rule.scores:
            values = _scores(values)
        return values + self.rule.shift if self.rule.shift else values


class ConcreteMLClient:
    """Concrete-ML's own deployment client, for the models `CircuitClient` does not know."""

    def __init__(self, bundle_dir: Path, key_dir: Path) -> None:
        from concrete.ml.deployment import FHEModelClient

        self.key_dir = key_dir
        self._bundle_dir = bundle_dir
        self.client = FHEModelClient(str(bundle_dir), key_dir=str(key_dir))
        self._lock = threading.RLock()

    @property
    def keys_loaded(self) -> bool:
        """Whether a key set is in memory."""
        return bool(self.client.client.keys.are_generated)

    def load_keys(self) -> None:
        """Load the key set of the key directory (made there when missing)."""
        with self._lock:
            self.client.generate_private_and_evaluation_keys(force=False)

    def generate_keys(self, force: bool) -> bytes:
        """The key set of the key directory, made there when missing, or anew when `force`."""
        with self._lock:
            if force:
                from concrete.ml.deployment import FHEModelClient

                shutil.rmtree(self.key_dir, ignore_errors=True)
                self.client = FHEModelClient(str(self._bundle_dir), key_dir=str(self.key_dir))
            self.client.generate_private_and_evaluation_keys(force=False)
            return self.client.get_serialized_evaluation_keys()

    def quantize(self, features: np.ndarray) -> np.ndarray:
        """Float features to the circuit's integers, by the model's own quantizers."""
        return np.asarray(self.client.model.quantize_input(features))

    def encrypt(self, quantized: np.ndarray) -> bytes:
        """Encrypt quantized integers; the serialized ciphertext."""
        with self._lock:
            if not self.keys_loaded:
                self.load_keys()
            return self.client.client.encrypt(quantized).serialize()

    def decrypt(self, ciphertext: bytes) -> np.ndarray:
        """Decrypt, dequantize and post-process a result."""
        with self._lock:
            if not self.keys_loaded:
                self.load_keys()
            return np.asarray(self.client.deserialize_decrypt_dequantize(ciphertext))


def open_circuit_client(bundle_dir: Path, key_dir: Path) -> CircuitCodec:
    """The light client when it knows the bundle's model class and Concrete-ML version, else
    Concrete-ML's own client where it is installed (the full client); a light install says why
    it cannot go on."""
    try:
        return CircuitClient(bundle_dir / "client.zip", key_dir)
    except UnsupportedProcessing as error:
        if importlib.util.find_spec("concrete.ml") is None:
            raise ClientError(
                f"{error}; Concrete-ML is not installed here to decode it instead: install the "
                "full client, or ask for a bundle built with a version this client knows"
            ) from None
        return ConcreteMLClient(bundle_dir, key_dir)
