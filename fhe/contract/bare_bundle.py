"""A directory holding only Concrete-ML's client.zip and server.zip (what `FHEModelDev.save()`
writes), described from what those files say so that it can be served as a `raw` model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fhe.contract.bundle import (
    CLIENT_ZIP,
    SERVER_ZIP,
    BundleMetadata,
    CircuitInfo,
    RawInput,
    client_spec_hash,
)
from fhe.contract.concrete_zip import PROCESSING_FILE, UnreadableZip, read_client_zip
from fhe.contract.keyset import encrypted_input_dimensions
from fhe.contract.outputs import UnknownModelType, model_type


def is_bare_bundle(path: Path) -> bool:
    """True for a directory with client.zip and server.zip and no model.json."""
    return (path / CLIENT_ZIP).is_file() and (path / SERVER_ZIP).is_file()


def _model_class(processing: dict) -> str:
    """The Concrete-ML class name that skops recorded in `model_type`, or "unknown"."""
    try:
        return model_type(processing)[1]
    except UnknownModelType:
        return "unknown"


def _input_shape(specs: dict) -> list[int]:
    """The shape of one input, from the circuit's encrypted input in `client.specs.json`, without
    its leading batch dimension (Concrete-ML compiles for one input at a time).

    A built-in model's circuit takes (1, features); a torch model's whatever its input tensor is.
    """
    try:
        dimensions = encrypted_input_dimensions(specs)
    except ValueError:
        raise ValueError("client.zip's circuit does not take one encrypted input") from None
    shape = dimensions[1:] if len(dimensions) > 1 else dimensions
    if not shape or any(d < 1 for d in shape) or math.prod(shape) > 1_000_000:
        raise ValueError(f"client.zip's circuit input has an unusable shape {dimensions}")
    return shape


def _n_bits(quantizer: Any) -> int | None:
    """The bit width a serialized input quantizer records (None when it records none);
    ValueError when it is not shaped as Concrete-ML writes it."""
    if not isinstance(quantizer, dict) or not isinstance(
        value := quantizer.get("serialized_value", {}), dict
    ):
        raise ValueError("client.zip's input quantizers are not JSON objects")
    bits = value.get("n_bits")
    return bits if isinstance(bits, int) and not isinstance(bits, bool) else None


def describe_bare_bundle(path: Path) -> BundleMetadata:
    """model.json as it would be for the bare directory: a raw input of the circuit's shape.

    Raises ValueError when client.zip does not hold what Concrete-ML writes (a member missing,
    not JSON, or JSON of another shape).
    """
    try:
        members = read_client_zip(path / CLIENT_ZIP)
        processing, versions, specs = members.processing(), members.versions(), members.specs()
    except (KeyError, UnreadableZip) as error:
        raise ValueError(f"client.zip is not Concrete-ML's: {error}") from None
    if not isinstance(processing, dict):
        raise ValueError(f"client.zip's {PROCESSING_FILE} is not a JSON object")
    quantizers = processing.get("input_quantizers")
    if not isinstance(quantizers, list) or not quantizers:
        raise ValueError("client.zip names no input quantizers")
    shape = _input_shape(specs)
    n_bits = sorted({bits for bits in map(_n_bits, quantizers) if bits is not None})
    return BundleMetadata(
        name=path.name,
        task="raw",
        description=f"A Concrete-ML model served from the bare directory `{path.name}`.",
        input=RawInput(features=math.prod(shape), shape=shape),
        circuit=CircuitInfo(model_type=_model_class(processing), params={"input_n_bits": n_bits}),
        versions=versions,
        client_spec_sha256=client_spec_hash(path),
    )
