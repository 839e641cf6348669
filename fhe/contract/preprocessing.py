"""The client-side step of a tabular bundle, from a row to the circuit's features, as clients
load it: plain parameters in JSON applied with numpy (no scikit-learn, no pickle), or the skops
file through the same audit the server applies to clear models."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, model_validator

from fhe.contract.outputs import mistyped_column, unfilled_column
from fhe.contract.sklearn_files import ModelLoadRefused, ModelPolicy, load_estimator

PLAIN_FORMAT = 1
PLAIN_MAX_BYTES = 16 * 1024 * 1024
"""A plain preprocessing file larger than this is refused before it is parsed."""


class UnusablePreprocessing(ValueError):
    """A plain preprocessing file that is malformed or does not fit the row it is given."""


class Impute(BaseModel):
    """Fill a missing value (None or NaN) with the value fitted for its column."""

    kind: Literal["impute"] = "impute"
    values: list[float | str | None]


class Scale(BaseModel):
    """`(x - offset) / scale` per column: StandardScaler, or MinMaxScaler as offset and scale."""

    kind: Literal["scale"] = "scale"
    offset: list[float]
    scale: list[float]

    @model_validator(mode="after")
    def _finite(self) -> Scale:
        numbers = [*self.offset, *self.scale]
        if not all(math.isfinite(number) for number in numbers) or 0.0 in self.scale:
            raise ValueError("offsets and scales must be finite, scales non-zero")
        return self


class OneHot(BaseModel):
    """One column per known category of each input column; an unknown one gives all zeros."""

    kind: Literal["onehot"] = "onehot"
    categories: list[list[float | str]]


Step = Annotated[Impute | Scale | OneHot, Field(discriminator="kind")]


class Part(BaseModel):
    """Some of the row's columns and the steps applied to them, in order."""

    columns: list[str] = Field(min_length=1)
    steps: list[Step]

    @model_validator(mode="after")
    def _widths(self) -> Part:
        width = len(self.columns)
        for step in self.steps:
            if width is None:
                raise ValueError("nothing may follow a one-hot step")
            sizes = {
                "impute": len(step.values) if isinstance(step, Impute) else None,
                "scale": len(step.offset) if isinstance(step, Scale) else None,
                "onehot": len(step.categories) if isinstance(step, OneHot) else None,
            }
            if sizes[step.kind] != width or (isinstance(step, Scale) and len(step.scale) != width):
                raise ValueError(f"a {step.kind} step of another width than its {width} columns")
            if isinstance(step, OneHot):
                width = None
        return self

    @property
    def width(self) -> int:
        """How many features this part makes."""
        for step in self.steps:
            if isinstance(step, OneHot):
                return sum(len(known) for known in step.categories)
        return len(self.columns)


class PlainPreprocessing(BaseModel):
    """A column transformer as plain parameters: its parts' outputs side by side, in order."""

    format: Literal[1] = PLAIN_FORMAT
    parts: list[Part]

    @property
    def width(self) -> int:
        """How many features it makes from one row."""
        return sum(part.width for part in self.parts)

    @classmethod
    def load(cls, path: Path) -> PlainPreprocessing:
        """Read and validate a plain preprocessing file (bounded in size)."""
        if path.stat().st_size > PLAIN_MAX_BYTES:
            raise UnusablePreprocessing(f"{path.name} is larger than {PLAIN_MAX_BYTES} bytes")
        try:
            return cls.model_validate_json(path.read_bytes())
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(item) for item in first["loc"])
            raise UnusablePreprocessing(f"{path.name}: {where}: {first['msg']}") from None

    def save(self, path: Path) -> Path:
        """Write it as stable, readable JSON."""
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1) + "\n")
        return path

    def transform(self, row: Mapping[str, Any]) -> np.ndarray:
        """The features (1 x width, float64) of one row given as column: value."""
        features: list[float] = []
        for part in self.parts:
            features += _apply(part, [row.get(column) for column in part.columns])
        return np.asarray(features, dtype=np.float64).reshape(1, -1)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _apply(part: Part, values: Sequence[Any]) -> list[float]:
    current = list(values)
    for step in part.steps:
        if isinstance(step, Impute):
            current = [
                fill if _missing(value) else value
                for value, fill in zip(current, step.values, strict=True)
            ]
        elif isinstance(step, Scale):
            current = [
                (_number(value, column) - offset) / scale
                for value, offset, scale, column in zip(
                    current, step.offset, step.scale, part.columns, strict=True
                )
            ]
        else:
            encoded: list[float] = []
            for value, known in zip(current, step.categories, strict=True):
                encoded += [1.0 if _same(value, category) else 0.0 for category in known]
            return encoded
    return [_number(value, column) for value, column in zip(current, part.columns, strict=True)]


def _number(value: Any, column: str) -> float:
    if _missing(value):
        raise UnusablePreprocessing(unfilled_column(column))
    if isinstance(value, str):
        raise UnusablePreprocessing(mistyped_column(column, "a number", repr(value)))
    return float(value)


def _same(value: Any, category: float | str) -> bool:
    if isinstance(category, str) or isinstance(value, str):
        return str(value) == str(category)
    return not _missing(value) and float(value) == float(category)


def load_preprocessing(path: Path) -> Any:
    """Load a bundle's skops preprocessing on the client: default audit, nothing extra."""
    hint = "clients trust only the audit's defaults, and a bundle cannot widen them"
    policy = ModelPolicy(allow_pickle_hint=hint, trust_hint=hint, trust_all_hint=hint)
    return load_estimator(path, "skops", policy)


__all__ = [
    "ModelLoadRefused",
    "PlainPreprocessing",
    "UnusablePreprocessing",
    "load_preprocessing",
]
