"""Concrete-ML's uniform quantizer, read from a bundle's `serialized_processing.json`.

The client quantizes its inputs and dequantizes the decrypted outputs with these parameters.
Reading them here, with numpy alone, spares the client Concrete-ML's import (which loads torch):
the arithmetic and the dtypes are Concrete-ML's own (`UniformQuantizer.quant` and `dequant`), so
the integers and floats are the same bit for bit, which `tests/test_circuit_client.py` checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class UnsupportedProcessing(ValueError):
    """The serialized processing uses something this reader does not know."""


NUMERIC_DTYPES = frozenset(
    {
        *("float16", "float32", "float64"),
        *("int8", "int16", "int32", "int64"),
        *("uint8", "uint16", "uint32", "uint64"),
    }
)
"""The dtypes a quantizer's numbers may have (the bundle comes from a server: no others)."""


def _dtype(name: Any) -> np.dtype:
    if name not in NUMERIC_DTYPES:
        raise UnsupportedProcessing(f"unexpected dtype {name!r}")
    return np.dtype(name)


def decoded(value: Any) -> Any:
    """A value of Concrete-ML's JSON: numpy scalars and arrays keep their dtype."""
    if not isinstance(value, dict):
        return value
    kind = value.get("type_name")
    if kind == "numpy_float" or kind == "numpy_integer":
        return _dtype(value.get("dtype")).type(value["serialized_value"])
    if kind == "numpy_array":
        return np.asarray(value["serialized_value"], dtype=_dtype(value.get("dtype")))
    raise UnsupportedProcessing(f"unknown serialized value {kind!r}")


@dataclass(frozen=True)
class Quantizer:
    """Scale, zero point and clipping range of one uniform quantizer."""

    scale: Any
    zero_point: Any
    offset: int
    n_bits: int | None
    is_narrow: bool
    no_clipping: bool

    @classmethod
    def from_json(cls, serialized: dict[str, Any]) -> Quantizer:
        """The quantizer of one `{"type_name": "UniformQuantizer", ...}` entry."""
        if serialized.get("type_name") != "UniformQuantizer":
            raise UnsupportedProcessing(f"unknown quantizer {serialized.get('type_name')!r}")
        fields = serialized["serialized_value"]
        no_clipping = bool(fields.get("no_clipping", False))
        n_bits = fields.get("n_bits")
        if not no_clipping and not (isinstance(n_bits, int) and 1 <= n_bits <= 64):
            raise UnsupportedProcessing(f"a clipping quantizer with n_bits {n_bits!r}")
        return cls(
            scale=decoded(fields["scale"]),
            zero_point=decoded(fields["zero_point"]),
            offset=int(decoded(fields.get("offset") or 0)),
            n_bits=None if n_bits is None else int(n_bits),
            is_narrow=bool(fields.get("is_narrow", False)),
            no_clipping=no_clipping,
        )

    def quant(self, values: np.ndarray) -> np.ndarray:
        """Float values to the circuit's integers: round, then clip to the n-bit range."""
        quantized = np.rint(values / self.scale + self.zero_point)
        if not self.no_clipping:
            assert self.n_bits is not None
            low = -self.offset + (1 if self.is_narrow else 0)
            quantized = quantized.clip(low, 2**self.n_bits - 1 - self.offset)
        return quantized.astype(np.int64)

    def dequant(self, quantized: np.ndarray) -> np.ndarray:
        """The circuit's integers back to floats."""
        return self.scale * (quantized - np.asarray(self.zero_point, dtype=np.float64))
