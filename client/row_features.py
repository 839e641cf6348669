"""Turning a table row into a circuit's features on this machine: check the columns with the
clear models' wording, convert the values to the declared dtypes, and run the bundle's
preprocessing (plain parameters, or audited skops). Raw models take a bare row of numbers instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from client.errors import ClientError
from fhe.contract.bundle import Column, TabularInput
from fhe.contract.outputs import column_messages, missing_columns, mistyped_column, unfilled_column
from fhe.contract.preprocessing import PlainPreprocessing, UnusablePreprocessing


class ColumnsMismatch(ClientError):
    """A row lacks columns the model needs and its preprocessing does not fill in."""


class TabularRows:
    """The columns a tabular model takes and the preprocessing that makes its features."""

    def __init__(self, info: TabularInput, preprocessing: Any | None = None) -> None:
        self.columns: list[Column] = list(info.columns)
        self.names = info.names
        self.features = info.features
        self.imputes = set(info.preprocessing.imputes if info.preprocessing else [])
        self.preprocessing = preprocessing

    def check_columns(self, given: Iterable[str]) -> list[str]:
        """Warnings for extra columns; ColumnsMismatch for missing ones not imputed.

        The messages are the clear contract's (api-inference-community's sklearn image).
        """
        given = set(given)
        expected = set(self.names)
        missing = expected - given
        if missing - self.imputes:
            imputed = sorted(missing & self.imputes)
            more = f" ({imputed} would be imputed)" if imputed else ""
            raise ColumnsMismatch(missing_columns(missing - self.imputes) + more)
        found = column_messages(given, expected)
        if missing:  # column_messages says the missing columns last
            found[-1] += " (imputed by the model's preprocessing)"
        return found

    def _value(self, column: Column, value: Any, where: str) -> Any:
        """One value as its column's dtype; missing (None, '' or NaN) only where imputed."""
        name, dtype = column.name, column.dtype
        empty = value is None or value == "" or (isinstance(value, float) and math.isnan(value))
        if empty:
            if name not in self.imputes:
                raise ClientError(f"{where}: {unfilled_column(name)}")
            return np.nan  # NaN, not None, even for text: scikit-learn imputes only NaN
        if dtype == "string":
            return str(value)
        if dtype == "bool" and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ClientError(f"{where}: {mistyped_column(name, 'true or false', repr(value))}")
            return lowered in ("true", "1")
        if isinstance(value, bool | int | float | str):
            try:
                number = float(value)
            except ValueError:
                raise ClientError(
                    f"{where}: {mistyped_column(name, 'a number', repr(value))}"
                ) from None
            if not math.isfinite(number):
                raise ClientError(f"{where}: {mistyped_column(name, 'finite', repr(value))}")
            return number
        wrong = type(value).__name__
        raise ClientError(f"{where}: {mistyped_column(name, 'a number', wrong)}")

    def values(self, row: Mapping[str, Any], where: str = "the row") -> dict[str, Any]:
        """The row's values of the model's columns, in order and typed (missing: NaN or None)."""
        return {
            column.name: self._value(column, row.get(column.name), where) for column in self.columns
        }

    def frame(self, row: Mapping[str, Any], where: str = "the row") -> Any:
        """The row as a one-line DataFrame of the model's columns, in order and typed (for a
        scikit-learn preprocessing, which the full client runs)."""
        import pandas as pd

        values = {name: [value] for name, value in self.values(row, where).items()}
        frame = pd.DataFrame(values, columns=self.names)
        for column in self.columns:
            if column.dtype == "string":
                frame[column.name] = frame[column.name].astype(object)
        return frame

    def encode(self, row: Mapping[str, Any], where: str = "the row") -> np.ndarray:
        """The circuit's float input (1 x features) for one row."""
        if self.preprocessing is None:
            values = self.values(row, where)
            features = np.asarray([[values[name] for name in self.names]], dtype=np.float64)
        elif isinstance(self.preprocessing, PlainPreprocessing):
            try:
                features = self.preprocessing.transform(self.values(row, where))
            except UnusablePreprocessing as error:
                raise ClientError(f"{where}: {error}") from None
        else:
            features = np.asarray(self.preprocessing.transform(self.frame(row, where)), np.float64)
        if features.shape != (1, self.features):
            raise ClientError(
                f"the preprocessing made {features.shape[1]} features, the model takes "
                f"{self.features}"
            )
        return features


def raw_row(
    values: Any, features: int, where: str = "the input", shape: list[int] | None = None
) -> np.ndarray:
    """`features` finite numbers (flat, or already in `shape`) as the circuit's float input:
    1 x features, or 1 x shape when the model takes an array of another shape."""
    try:
        array = np.asarray(values, dtype=np.float64).reshape(1, -1)
    except (TypeError, ValueError):
        raise ClientError(f"{where} must hold numbers only") from None
    if array.shape[1] != features:
        raise ClientError(f"{where} has {array.shape[1]} numbers, the model takes {features}")
    if not np.isfinite(array).all():
        raise ClientError(f"{where} holds NaN or infinity")
    return array.reshape(1, *shape) if shape else array


def read_raw_rows(path: Path, features: int) -> list[list[float]]:
    """Flat rows of a `.npy` array (its first dimension indexes the inputs) or of a CSV of numbers.

    A CSV's first line is a header when it does not parse as numbers. The .npy file is read
    without pickles.
    """
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise ClientError(f"{path} is not a numeric .npy array: {error}") from None
        rows = np.atleast_2d(array)
        rows = rows.reshape(rows.shape[0], int(np.prod(rows.shape[1:])))
        return [
            raw_row(row, features, f"{path} row {n}")[0].tolist() for n, row in enumerate(rows, 1)
        ]
    import csv

    with path.open(newline="", encoding="utf-8-sig") as handle:
        lines = [line for line in csv.reader(handle) if line]
    if lines:
        try:
            [float(value) for value in lines[0]]
        except ValueError:
            lines = lines[1:]
    return [
        raw_row(line, features, f"{path} row {n}")[0].tolist() for n, line in enumerate(lines, 1)
    ]
