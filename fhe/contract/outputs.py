"""What a model's outputs and inputs mean, said once for recipes, client and server: which label
a row of class scores is, the messages about a row's columns, and which Concrete-ML model class
a bundle holds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from fhe.contract.concrete_zip import member_json, read_members

TIE_DECIMALS = 9
"""Scores equal to this many decimals tie: quantized trees tie often, and the float sums of tied
classes differ in their last bits."""


def top_classes(scores: Any) -> np.ndarray:
    """Each row's label position: the highest score, the first label on a tie (equal to 1e-9),
    as a clear model's argmax picks."""
    return np.argmax(np.round(np.asarray(scores, dtype=np.float64), TIE_DECIMALS), axis=-1)


def top_class(scores: Any) -> int:
    """The label position of one row of class scores (`top_classes`' rule)."""
    return int(top_classes(np.asarray(scores, dtype=np.float64).ravel()))


MISSING_COLUMNS = "The following columns were expected but not given: {}"
EXTRA_COLUMNS = "The following columns were given but not expected: {}"
"""The wording of the clear contract (api-inference-community's sklearn image)."""


def missing_columns(names: set[str]) -> str:
    """The message for columns a model takes that a row lacks."""
    return MISSING_COLUMNS.format(names)


def extra_columns(names: set[str]) -> str:
    """The message for columns a row has that the model does not take."""
    return EXTRA_COLUMNS.format(names)


def mistyped_column(name: str, wanted: str, shown: str) -> str:
    """The message for a value (`shown` as the user should see it) not of its column's type."""
    return f"column {name!r} must be {wanted}, not {shown}"


def unfilled_column(name: str) -> str:
    """The message for a column a row leaves empty that the model needs and does not impute."""
    return f"column {name!r} is missing and is not imputed"


def column_messages(given: Iterable[str], expected: Iterable[str]) -> list[str]:
    """The warnings for a row's columns against a model's: extra ones, then missing ones."""
    given, expected = set(given), set(expected)
    found = []
    if given - expected:
        found.append(extra_columns(given - expected))
    if expected - given:
        found.append(missing_columns(expected - given))
    return found


BUILT_IN_MODULE = "concrete.ml.sklearn"
"""Where Concrete-ML's built-in (scikit-learn-like) model classes live."""


class UnknownModelType(ValueError):
    """A `serialized_processing.json` whose model type cannot be read, or is not built in."""


def model_type(processing: Any) -> tuple[str, str]:
    """The module and class a Concrete-ML `serialized_processing.json` was saved from (skops
    records them in `model_type` as a hex-encoded zip holding `schema.json`)."""
    try:
        packed = bytes.fromhex(processing["model_type"]["serialized_value"])
        schema = member_json(read_members(packed, ["schema.json"]), "schema.json")
        return str(schema.get("__module__", "")), str(schema["__class__"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:  # UnreadableZip too
        raise UnknownModelType(f"unreadable model type ({error})") from None


def built_in_model_class(processing: Any) -> str:
    """The class name of a Concrete-ML built-in model; UnknownModelType for anything else."""
    module, name = model_type(processing)
    if not module.startswith(BUILT_IN_MODULE):
        raise UnknownModelType(f"model type {module}.{name}")
    return name
